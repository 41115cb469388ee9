"""The source text of JSON documents, read without recursion.

Invariant: nothing here recurses, so no input can exhaust Python's stack,
and nothing here backtracks: :func:`depth` runs on any bytes, every other
function only on text orjson has already accepted (on valid JSON each
``"`` the scanners meet opens a string, which a regular expression takes
whole, in C).  What they return are slices of the text exactly as the
client wrote it.

Why: payloads are stored as sent, so a batch must be cut into the exact
text of each element, and error messages quote what the client sent (a
number written ``100000000000000000000`` is not ``1e+20``).  The stdlib's
``json`` scanner could find where an element ends, but it recurses once per
nesting level and raised ``RecursionError`` (a 500) on a batch nested 954
deep.

Layer rule: the HTTP layer; pure functions of a string, no I/O.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate

#: Deepest nesting of arrays and objects in one event (or any request
#: body), counted inside the event: ``{}`` is depth 1, ``{"a": [1]}`` depth 2;
#: a batch's enclosing array does not count.  Deeper than any real payload,
#: and far inside what orjson parses (1,024 levels for a whole document) and
#: renders (254), and inside Python's recursion limit for consumers that
#: parse with the stdlib.
MAX_DEPTH = 100

_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
#: Everything up to the next bracket outside a string, and that bracket.
_NEXT_BRACKET = re.compile(r'[^][{}"]*(?:' + _STRING + r'[^][{}"]*)*([][{}])', re.S)
#: A string literal (taken whole), or a bracket, colon or comma.
_TOKEN = re.compile(_STRING + r"|[][{},:]", re.S)
_WS = " \t\n\r"
_ARRAY = re.compile(rb"[ \t\n\r]*\[")
_STRING_BYTES = re.compile(_STRING.encode(), re.S)

#: For :func:`depth`: every byte but quotes and brackets is dropped.
_DROP = bytes(b for b in range(256) if b not in b'"[]{}')
_QUOTED = re.compile(rb'"[^"]*"')
_STEP = [0] * 256
for _c, _v in zip(b"[{]}", (1, 1, -1, -1), strict=True):
    _STEP[_c] = _v


def depth(body: bytes) -> int:
    """How deep arrays and objects nest (0 for a scalar), in C speed.

    Escaped backslashes and quotes are dropped, then everything but quotes
    and brackets, then what lies between quotes; the rest is summed +1/-1.
    Exact for valid JSON; for invalid JSON a count that its refusal makes
    moot (every step is linear, whatever the bytes).
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = body.translate(None, _DROP)
    if b'"' in skeleton:
        skeleton = _QUOTED.sub(b"", skeleton)
    return max(accumulate(map(_STEP.__getitem__, skeleton)), default=0)


def too_deep(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether an event in ``body`` nests deeper than ``limit``.

    A body that is an array may hold events, so its own level is not
    counted.  Most bodies hold fewer brackets than the limit, which settles
    it without a scan.
    """
    if _ARRAY.match(body):
        limit += 1
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    return depth(body) > limit


def split_array(text: str) -> tuple[list[str], int]:
    """The exact text of each element of a valid JSON array of objects (or
    arrays), and how deep the deepest element nests (``{}``: 1)."""
    items: list[str] = []
    level = deepest = 0
    start = 0
    for m in _NEXT_BRACKET.finditer(text, text.index("[") + 1):
        i = m.end() - 1
        if text[i] in "[{":
            if level == 0:
                start = i
            level += 1
            if level > deepest:
                deepest = level
        else:
            level -= 1
            if level == 0:
                items.append(text[start : i + 1])
            elif level < 0:  # the array's own "]"
                break
    return items, deepest


def members(text: str) -> list[tuple[str, str]]:
    """``(name, value text)`` of each member of a valid JSON object, in
    order, each value's text exactly as written."""
    found: list[tuple[str, str]] = []
    level = 0
    name = ""
    value_start = -1
    for m in _TOKEN.finditer(text, text.index("{") + 1):
        i = m.start()
        c = text[i]
        if c in "[{":
            level += 1
        elif c in "]}":
            if level == 0:  # the object's own "}"
                if value_start >= 0:
                    found.append((name, text[value_start:i].strip(_WS)))
                break
            level -= 1
        elif level > 0:
            continue
        elif c == '"' and value_start < 0:
            name = json.loads(m.group())  # a string literal: no recursion
        elif c == ":":
            value_start = m.end()
        elif c == ",":
            found.append((name, text[value_start:i].strip(_WS)))
            value_start = -1
    return found


def duplicate_name(text: str) -> str | None:
    """The first name given twice in one object anywhere in the valid JSON
    ``text`` (names compared unescaped), or None."""
    # One set of names per open object, None for an open array.
    open_: list[set[str] | None] = []
    literal = ""
    for m in _TOKEN.finditer(text):
        c = text[m.start()]
        if c == '"':
            literal = m.group()
        elif c == ":":
            names = open_[-1]
            assert names is not None
            name = json.loads(literal) if "\\" in literal else literal[1:-1]
            if name in names:
                return name
            names.add(name)
        elif c == "{":
            open_.append(set())
        elif c == "[":
            open_.append(None)
        elif c in "]}":
            open_.pop()
    return None


def without_strings(text: bytes) -> bytes:
    """Valid JSON with its string literals cut out."""
    return _STRING_BYTES.sub(b"", text)
