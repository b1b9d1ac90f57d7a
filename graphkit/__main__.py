"""`python -m graphkit` runs the CLI, as the `graphkit` command does."""

from graphkit.cli import main

raise SystemExit(main())
