"""JSON value helpers shared by the socket protocol and the OpenAI-compatible schema: integer and number
checks (a boolean is not an integer), type names and short echoes for error messages, and the refusal of
NaN and Infinity, which Python's json module accepts. No torch, stdlib only."""

from __future__ import annotations

import json
import math


def reject_constant(name: str):
    """`json.loads(..., parse_constant=reject_constant)`: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON (use a finite number)")


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:  # an int of any size (no float conversion: 10**309 overflows it)
    return is_int(v) or (isinstance(v, float) and math.isfinite(v))


def show(v: object) -> str:
    """The value as JSON, cut to 40 characters (always ASCII: safe to echo)."""
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:40] + "..."


def type_name(v: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)
