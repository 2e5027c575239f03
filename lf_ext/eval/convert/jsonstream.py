"""Streaming reads of large JSON files with the standard library: one top-level member (or array element) at a time.

Benchmark annotation files are single JSON documents (GQA's train questions are over a gigabyte), so they are read in
chunks and decoded value by value with :meth:`json.JSONDecoder.raw_decode`; only the current value is held in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_CHUNK = 1 << 20


class JsonStream:
    """A cursor over a JSON text file that decodes one value at a time."""

    def __init__(self, path: str | Path, chunk_size: int = _CHUNK):
        self.path = Path(path)
        self._file = open(self.path, encoding="utf-8")
        self._chunk = chunk_size
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._decoder = json.JSONDecoder()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fill(self, size: int | None = None) -> bool:
        """Read more text; False at end of file."""
        if self._eof:
            return False
        chunk = self._file.read(size or self._chunk)
        self._buf = self._buf[self._pos:] + chunk
        self._pos = 0
        if not chunk:
            self._eof = True
        return bool(chunk)

    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.path.name}: invalid JSON: {message}")

    def peek(self) -> str:
        """The next non-blank character ('' at end of file)."""
        while True:
            self._pos = _WS.match(self._buf, self._pos).end()
            if self._pos < len(self._buf) or not self._fill():
                return self._buf[self._pos] if self._pos < len(self._buf) else ""

    def expect(self, char: str) -> None:
        found = self.peek()
        if found != char:
            raise self._error(f"expected {char!r}, found {found or 'end of file'!r}")
        self._pos += 1

    def value(self) -> Any:
        """Decode the next value, reading more of the file while it is incomplete."""
        self.peek()
        size = self._chunk
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as err:
                # an error near the end of the buffer (or an open string) may just be a value cut by the chunking
                truncated = len(self._buf) - err.pos < 64 or err.msg.startswith("Unterminated string")
                if not truncated or not self._fill(size):
                    raise self._error(f"{err.msg} near character {err.pos - self._pos} of this value") from None
                size *= 2  # values longer than a chunk: grow geometrically, not quadratically
                continue
            if end == len(self._buf) and not self._eof and self._fill(size):
                continue  # a number may go on in the next chunk
            self._pos = end
            return value

    def members(self) -> Iterator[str]:
        """Walk an object: yields each key, after which the caller must consume its value (``value()`` or a walk)."""
        self.expect("{")
        if self.peek() == "}":
            self._pos += 1
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise self._error(f"object key is not a string: {key!r}")
            self.expect(":")
            yield key
            following = self.peek()
            self._pos += 1
            if following == "}":
                return
            if following != ",":
                raise self._error(f"expected ',' or '}}' after the value of {key!r}, found {following or 'end of file'!r}")

    def elements(self) -> Iterator[int]:
        """Walk an array: yields each index, after which the caller must consume the element."""
        self.expect("[")
        if self.peek() == "]":
            self._pos += 1
            return
        index = 0
        while True:
            yield index
            following = self.peek()
            self._pos += 1
            if following == "]":
                return
            if following != ",":
                raise self._error(f"expected ',' or ']' after element {index}, found {following or 'end of file'!r}")
            index += 1


def iter_members(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` for each member of the file's top-level object, in file order."""
    with JsonStream(path) as stream:
        for key in stream.members():
            yield key, stream.value()


def iter_array_member(path: str | Path, key: str) -> Iterator[Any]:
    """The elements of the array under top-level ``key`` (other members are decoded and dropped)."""
    with JsonStream(path) as stream:
        found = False
        for name in stream.members():
            if name != key or found:
                stream.value()
                continue
            found = True
            if stream.peek() != "[":
                raise ValueError(f"{Path(path).name}: '{key}' is not a JSON array")
            for _ in stream.elements():
                yield stream.value()
        if not found:
            raise ValueError(f"{Path(path).name}: no top-level '{key}'")


def read_member(path: str | Path, key: str, default: Any = None) -> Any:
    """The value of one top-level member (streams past the others)."""
    with JsonStream(path) as stream:
        result = default
        for name in stream.members():
            value = stream.value()
            if name == key:
                result = value
        return result
