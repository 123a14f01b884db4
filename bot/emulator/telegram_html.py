"""Telegram's HTML parse mode, as the Bot API applies it: text plus entities, or its 400 errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_TAG_ENTITY_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ENTITY = re.compile(r"&(?:(lt|gt|amp|quot)|#(\d{1,7})|#x([0-9a-fA-F]{1,6}));")
_TAG_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9-]*")
_ATTRIBUTE = re.compile(r"""\s*([a-zA-Z-]+)\s*(?:=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?""")


class EntityParseError(ValueError):
    """The text is not valid Telegram HTML; str() is Telegram's description, after "can't parse entities: "."""


@dataclass
class _OpenTag:
    name: str
    start: int  # in UTF-16 code units, as Telegram counts offsets
    attributes: dict[str, str] = field(default_factory=dict)


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def parse_html(source: str) -> tuple[str, list[dict[str, Any]]]:
    """Return the plain text and its entities, or raise EntityParseError as Telegram would."""
    text: list[str] = []
    length = 0  # of `text`, in UTF-16 code units
    entities: list[dict[str, Any]] = []
    stack: list[_OpenTag] = []
    position = 0
    while position < len(source):
        char = source[position]
        if char == "&":
            match = _ENTITY.match(source, position)
            decoded = _decode_entity(match) if match else "&"
            position = match.end() if match else position + 1
            text.append(decoded)
            length += utf16_length(decoded)
        elif char == "<":
            position = _read_tag(source, position, stack, entities, length)
        else:
            text.append(char)
            length += utf16_length(char)
            position += 1
    if stack:
        msg = f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"'
        raise EntityParseError(msg)
    return "".join(text), sorted(entities, key=lambda entity: entity["offset"])


def _decode_entity(match: re.Match[str]) -> str:
    named, decimal, hexadecimal = match.groups()
    if named:
        return _NAMED_ENTITIES[named]
    code = int(decimal) if decimal else int(hexadecimal, 16)
    return chr(code) if 0 < code <= 0x10FFFF else "&"


def _read_tag(source: str, position: int, stack: list[_OpenTag], entities: list[dict[str, Any]], length: int) -> int:
    offset = len(source[:position].encode())
    closing = source.startswith("</", position)
    name_match = _TAG_NAME.match(source, position + (2 if closing else 1))
    if name_match is None:
        msg = f"Unexpected end of name token at byte offset {offset}"
        raise EntityParseError(msg)
    name = name_match.group().lower()
    end = source.find(">", name_match.end())
    if end == -1:
        msg = f"Unclosed start tag at byte offset {offset}"
        raise EntityParseError(msg)
    if closing:
        if not stack:
            msg = f"Unexpected end tag at byte offset {offset}"
            raise EntityParseError(msg)
        opened = stack.pop()
        if opened.name != name:
            msg = f'Unmatched end tag at byte offset {offset}, expected "</{opened.name}>", found "</{name}>"'
            raise EntityParseError(msg)
        if length > opened.start:
            entities.append(_entity(opened, length))
        return end + 1
    if name not in _TAG_ENTITY_TYPES:
        msg = f'Unsupported start tag "{name}" at byte offset {offset}'
        raise EntityParseError(msg)
    attributes = {
        match.group(1).lower(): next((g for g in match.groups()[1:] if g is not None), "")
        for match in _ATTRIBUTE.finditer(source[name_match.end() : end])
        if match.group(1)
    }
    stack.append(_OpenTag(name, length, attributes))
    return end + 1


def _entity(tag: _OpenTag, end: int) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "type": _TAG_ENTITY_TYPES[tag.name],
        "offset": tag.start,
        "length": end - tag.start,
    }
    if tag.name == "a":
        entity["url"] = tag.attributes.get("href", "")
    elif tag.name == "pre" and "language" in tag.attributes:
        entity["language"] = tag.attributes["language"]
    elif tag.name == "tg-emoji":
        entity["custom_emoji_id"] = tag.attributes.get("emoji-id", "")
    return entity
