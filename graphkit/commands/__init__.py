"""One module per `graphkit` subcommand (add_parser + run)."""
