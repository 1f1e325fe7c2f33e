"""User-facing errors: one line each, naming the file, the field, what was expected and what was given.

A `UserError` is something the user can fix (bad key, wrong type, missing data folder); the CLI prints
its lines and exits with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

EXIT_USER_ERROR = 2


class UserError(Exception):
    """One or more one-line problems the user can fix."""

    def __init__(self, *lines: str) -> None:
        self.lines = [line for line in lines if line]
        super().__init__("\n".join(self.lines))


def problem(source: str | Path | None, field: str, expected: str, given: Any) -> str:
    """Format one problem line: `FILE: FIELD: expected X, got Y`."""
    where = f"{source}: " if source else ""
    given_text = given if isinstance(given, str) and given.startswith("<") else repr(given)
    return f"{where}{field}: expected {expected}, got {given_text}"


_EXPECTED_BY_TYPE = {
    "extra_forbidden": "no such key (a typo?)",
    "missing": "a value (required)",
    "float_parsing": "a number",
    "float_type": "a number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
}


def _expected_from_error(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")), "")
        return f"a value {op} {bound}"
    if kind == "value_error":
        return str(ctx.get("error", err.get("msg", "a valid value")))
    if kind == "extra_forbidden":
        return _EXPECTED_BY_TYPE[kind]
    return _EXPECTED_BY_TYPE.get(kind, err.get("msg", "a valid value"))


def from_validation_error(exc: ValidationError, source: str | Path | None, prefix: str = "") -> UserError:
    """Turn pydantic's multi-line report into our one-line-per-problem form."""
    lines = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function-"))
        field = f"{prefix}{path}" if path else (prefix.rstrip(".") or "<top level>")
        given = err.get("input")
        if err.get("type") == "extra_forbidden":
            lines.append(f"{source}: {field}: unknown key (not a config field)" if source else f"{field}: unknown key")
            continue
        message = str((err.get("ctx") or {}).get("error", ""))
        if err.get("type") == "value_error" and re.match(r"^[\w.]+: expected ", message):
            # a cross-field check that names its own field: `backbone.weights: expected ..., got ...`
            lines.append(f"{source}: {prefix}{message}" if source else f"{prefix}{message}")
            continue
        if err.get("type") == "missing":
            given = "<nothing>"
        lines.append(problem(source, field, _expected_from_error(err), given))
    return UserError(*lines)
