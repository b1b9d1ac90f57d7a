"""Checking the files users hand in (input spec, plan) with pydantic, in one sentence.

The file formats are plain dataclasses and pydantic models; pydantic checks types,
unknown keys, NaN/inf and ranges from their annotations, and `validate` turns its report
into one sentence that names the file, the key and what was expected, so a typo never
becomes a traceback or a silently wrong number.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, PydanticUserError, TypeAdapter, ValidationError

from graphkit.errors import InputError

T = TypeVar("T")

# what every file section is checked with: no unknown keys, no NaN/inf, no "1" for 1
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


@cache
def _adapter(kind: Any) -> TypeAdapter:
    try:  # a plain type (a pass option's annotation) is checked as strictly as a file
        return TypeAdapter(kind, config=STRICT)
    except PydanticUserError:  # models and dataclasses carry their own config
        return TypeAdapter(kind)


def validate(kind: Any, data: Any, where: str) -> Any:
    """`data` as `kind` (a dataclass, pydantic model or type), or GraphkitError naming
    `where` (e.g. the file), the key and the problem."""
    # as JSON: in strict mode a mapping is a valid dataclass only when it comes as JSON,
    # and YAML and JSON files hold nothing JSON cannot say
    text = json.dumps(data, default=str)
    try:
        return _adapter(kind).validate_json(text)
    except ValidationError as exc:
        raise InputError(describe(exc, where)) from None


def describe(exc: ValidationError, where: str) -> str:
    """The first problem pydantic found, as one sentence."""
    first = exc.errors(include_url=False)[0]
    key = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    message = first["msg"]
    # the words of YAML and Python, not of JSON (the files are checked as JSON, above)
    for json_word, word in (
        ("valid array", "list"),
        ("valid dictionary", "mapping"),
        ("valid object", "mapping"),
    ):
        message = message.replace(json_word, word)
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{where}: unknown key '{key}'"
    if first["type"] == "missing":
        return f"{where}: '{key}' is missing"
    if first["type"] == "value_error":  # our own checks: the message names its key
        message = message.removeprefix("Value error, ")
        if "." in key:
            return f"{where}: {key}: {message} (got {_shown(first.get('input'))})"
        return f"{where}: {message}"
    got = first.get("input")
    shown = _shown(got)
    at = f" {key}:" if key else ""
    return f"{where}:{at} {message[0].lower()}{message[1:]} (got {shown})"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["STRICT", "describe", "validate"]


# a spec or pipeline is a few hundred values; YAML aliases can make a small file expand
# into billions of them (nested anchors) before any check sees it
MAX_YAML_VALUES = 1_000_000


def _read_text(path: str | os.PathLike, what: str) -> tuple[Path, str]:
    """A user's text file, or one sentence: missing, not a regular file (a FIFO would
    block), unreadable, not UTF-8 text."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    if not p.is_file():
        raise InputError(f"{what} {p} is not a regular file")
    try:
        return p, p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} {p} is not a text file") from None
    except OSError as exc:
        raise InputError(f"{what} {p} cannot be read ({exc.strerror})") from None


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """A user's YAML file, parsed safely: missing, not a regular file (a FIFO would block),
    not text, invalid YAML, nested too deeply, or expanding past MAX_YAML_VALUES through
    aliases -> one InputError sentence naming the file."""
    p, text = _read_text(path, what)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_YAML_VALUES:
            raise InputError(
                f"{what} {p} expands to more than {MAX_YAML_VALUES:,} values through YAML "
                "aliases; write it out plainly"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{what} {p} is not valid YAML{where}") from None
    except RecursionError:
        raise InputError(f"{what} {p} is nested too deeply to be a {what}") from None
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node) -> int:
    """Values the document holds once aliases are expanded (shared nodes counted per use),
    without expanding anything: sizes of shared nodes are memoized."""
    size: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            visiting.discard(id(node))
            size[id(node)] = min(1 + sum(size.get(id(c), 0) for c in children), 2**62)
        elif id(node) in visiting:  # a node that contains itself expands without end
            return 2**62
        else:
            visiting.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
    return size[id(root)]


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A user's JSON file: missing, not a regular file, not text, not JSON, nested too
    deeply or holding a number Python refuses to parse -> one InputError sentence."""
    p, text = _read_text(path, what)
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(f"{what} {p} is nested too deeply to be a {what}") from None
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        line = getattr(exc, "lineno", None)
        where = f" at line {line}" if line else ""
        raise InputError(f"{what} {p} is not valid JSON{where}") from None
