"""Checking the files users hand in (input spec, plan) with pydantic, in one sentence.

The file formats are plain dataclasses and pydantic models; pydantic checks types,
unknown keys, NaN/inf and ranges from their annotations, and `validate` turns its report
into one sentence that names the file, the key and what was expected, so a typo never
becomes a traceback or a silently wrong number.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, TypeVar

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
