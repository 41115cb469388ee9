"""The bytes of the event bus's long answers, parsed incrementally, without I/O.

Invariant: both parsers take the body in chunks of any size, as they come
off the socket, and hold no more than the element (or SSE message) being
completed plus one chunk, so a history of any length and a stream of any
duration cost constant memory; what they return for an event is the
server's exact JSON text beside its parsed value (an export can write it
byte for byte).

* :class:`ArrayReader`: a JSON array of objects (the history, dead
  letters), element by element.
* :class:`SSEReader`: ``text/event-stream`` messages (id, event, data).

Both flavours of the client (:mod:`.sync`, :mod:`.tx`) feed them; so do the
tests, chunk boundaries included.

Layer rule: the client library; the standard library only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


class ArrayReader:
    """Splits a streamed JSON array into ``(text, value)`` of each element.

    An element that does not decode yet is taken to be incomplete (the
    server sends valid JSON; a body that ends early is refused by
    :meth:`close`); decoding is tried again only once the buffer has doubled,
    so an element spread over many chunks is not re-parsed at every one.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._pending = b""  # an incomplete UTF-8 sequence at a chunk's end
        self._started = False
        self._ended = False
        self._seen = False
        self._retry_at = 0

    def feed(self, chunk: bytes) -> list[tuple[str, object]]:
        """The elements completed by ``chunk``."""
        data = self._pending + chunk
        try:
            text = data.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as e:
            if e.start < len(data) - 3:
                raise ValueError(f"the answer is not valid UTF-8 (byte {e.start})") from None
            text, self._pending = data[: e.start].decode("utf-8"), data[e.start :]
        self._buffer += text
        if len(self._buffer) < self._retry_at:
            return []
        return self._elements()

    def _elements(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        buf = self._buffer
        i, n = 0, len(buf)
        self._retry_at = 0
        while True:
            while i < n and buf[i] in _WS:
                i += 1
            if i == n or self._ended:
                break
            if not self._started:
                if buf[i] != "[":
                    raise ValueError(f"expected a JSON array, got {buf[i : i + 40]!r}")
                self._started = True
                i += 1
                continue
            if buf[i] == "]":
                self._ended = True
                i += 1
                continue
            start = i
            if self._seen:
                if buf[i] != ",":
                    raise ValueError(f"expected ',' or ']' in the array, got {buf[i : i + 40]!r}")
                start += 1
                while start < n and buf[start] in _WS:
                    start += 1
            try:
                value, end = _DECODER.raw_decode(buf, start)
            except json.JSONDecodeError:
                self._retry_at = 2 * (n - i)
                break
            if end == n and not isinstance(value, (dict, list)):
                break  # a number may go on in the next chunk
            out.append((buf[start:end], value))
            self._seen = True
            i = end
        self._buffer = buf[i:]
        return out

    def close(self) -> list[tuple[str, object]]:
        """The body ended: the elements it completed; it must have been a
        whole array."""
        self._retry_at = 0
        out = self._elements()
        if self._pending or self._buffer.strip(_WS) or not self._ended:
            raise ValueError("the answer ended before its JSON array did (the connection was cut?)")
        return out


def members(text: str) -> dict[str, tuple[str, object]]:
    """The members of a JSON object's text: name → (its value's text exactly
    as written, its value)."""
    found: dict[str, tuple[str, object]] = {}
    i = _skip(text, 0)
    if not text.startswith("{", i):
        raise ValueError("not a JSON object")
    i = _skip(text, i + 1)
    if text.startswith("}", i):
        return found
    while True:
        name, i = _DECODER.raw_decode(text, i)
        i = _skip(text, i)
        if not isinstance(name, str) or not text.startswith(":", i):
            raise ValueError("not a JSON object")
        start = _skip(text, i + 1)
        value, i = _DECODER.raw_decode(text, start)
        found[name] = (text[start:i], value)
        i = _skip(text, i)
        if text.startswith("}", i):
            return found
        if not text.startswith(",", i):
            raise ValueError("not a JSON object")
        i = _skip(text, i + 1)


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


@dataclass(frozen=True)
class Message:
    """One SSE message: its ``event`` name (``"message"`` if it has none),
    its ``data`` (lines joined with newlines) and the ``id`` it set, if any."""

    event: str
    data: str
    id: str | None


class SSEReader:
    """Splits a ``text/event-stream`` body into :class:`Message` objects
    (the WHATWG rules: lines end with CRLF, LF or CR; comments are dropped;
    a blank line dispatches)."""

    def __init__(self) -> None:
        self._partial = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> Iterator[Message]:
        data = self._partial + chunk
        lines = data.splitlines(keepends=True)
        self._partial = b""
        # A line is complete at LF, or at CR unless it ends the chunk (the
        # LF of a CRLF may come with the next one).
        if lines and not lines[-1].endswith(b"\n"):
            self._partial = lines.pop()
        for raw in lines:
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if not line:
                if self._data:
                    yield Message(self._event or "message", "\n".join(self._data), self._id)
                self._event, self._data, self._id = "", [], None
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id" and "\0" not in value:
                self._id = value


def backoff(attempt: int, first: float = 0.1, most: float = 5.0) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): doubling
    from ``first`` up to ``most``, with ±20 % jitter so clients that lost
    the same server do not come back at the same instant."""
    delay: float = min(most, first * 2**attempt)
    return delay * random.uniform(0.8, 1.2)
