"""Data keys as MongoDB field names: `.`, `$`, `%` and NUL percent-escaped, at any depth.

`{"a.b": 1}` must read back as `{"a.b": 1}`, not `{"a": {"b": 1}}`: data keys
are the user's, not field paths. Plain Python, so importing it loads no driver.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_ESCAPED = re.compile(r"[.$%\x00]")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
_EMPTY_KEY = "%"  # an escaped key never ends in a bare "%"


def escape_key(key: str) -> str:
    """A document field name for a data key: no '.', no '$', never empty."""
    return _ESCAPED.sub(lambda match: f"%{ord(match.group()):02X}", key) if key else _EMPTY_KEY


def unescape_key(field: str) -> str:
    return "" if field == _EMPTY_KEY else _ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), field)


def escape_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {escape_key(str(key)): escape_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [escape_value(item) for item in value]
    return value


def unescape_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {unescape_key(key): unescape_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unescape_value(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)  # PyMongo reads a 64-bit integer as bson.Int64: give back the plain int that was stored
    return value
