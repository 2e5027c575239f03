"""TFRecord files and ``tf.train.Example`` protos, read without TensorFlow.

* Framing (per record): ``uint64 length`` (little-endian), ``uint32 masked_crc32c(length bytes)``, ``data``,
  ``uint32 masked_crc32c(data)``; the mask is ``((crc >> 15) | (crc << 17)) + 0xA282EAD8`` (mod 2**32). The length
  checksum is always verified; the data checksum is verified when ``verify_data`` is true (pure-Python CRC-32C is slow:
  tens of MB/s at best, so it is opt-in). Files may be GZIP-compressed as a whole (``compression_type='GZIP'``).
* Protobuf wire format: a minimal reader of (field number, wire type, value) triples; varints, 64/32-bit fixed and
  length-delimited fields (groups are rejected).
* ``tf.train.Example``: ``features(1) -> feature map entries(1) {key(1): string, value(2): Feature}``, with
  ``Feature = bytes_list(1) | float_list(2) | int64_list(3)``, each ``{repeated value = 1}`` (packed or not).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Union

_MASK_DELTA = 0xA282EAD8
_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)
del _n, _c

Feature = Union[list[bytes], list[int], list[float]]


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of ``data`` (check value: ``crc32c(b"123456789") == 0xE3069283``)."""
    crc ^= 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _open(path: Path):
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def iter_tfrecords(path: str | Path, verify_data: bool = False) -> Iterator[bytes]:
    """The payloads of a (possibly GZIP-compressed) TFRecord file; a damaged file raises ``ValueError`` naming the
    file and the record number."""
    path = Path(path)
    index = 0
    try:
        with _open(path) as stream:
            while True:
                header = stream.read(12)
                if not header:
                    return
                where = f"{path.name} record {index}"
                if len(header) < 12:
                    raise ValueError(f"{where}: truncated record header")
                length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
                if masked_crc32c(length_bytes) != length_crc:
                    raise ValueError(f"{where}: length checksum mismatch (not a TFRecord file, or damaged)")
                (length,) = struct.unpack("<Q", length_bytes)
                data = stream.read(length)
                footer = stream.read(4)
                if len(data) < length or len(footer) < 4:
                    raise ValueError(f"{where}: truncated record (the file ends inside it)")
                if verify_data and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                    raise ValueError(f"{where}: data checksum mismatch")
                yield data
                index += 1
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ValueError(f"{path.name} record {index}: cannot read ({err})") from None


# -- protobuf wire format -------------------------------------------------------------------------------------------


def read_varint(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("protobuf: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("protobuf: varint too long")


def iter_fields(buf: memoryview | bytes) -> Iterator[tuple[int, int, int | memoryview]]:
    """``(field number, wire type, value)`` for each field of a message: ints for varint/fixed fields (fixed ones
    unsigned), a ``memoryview`` for length-delimited ones."""
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("protobuf: truncated fixed64")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise ValueError(f"protobuf: field {number} runs past the end of the message")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("protobuf: truncated fixed32")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"protobuf: unsupported wire type {wire} (field {number})")
        yield number, wire, value


def signed(value: int) -> int:
    """An ``int32``/``int64`` varint as a Python int (negative values are 64-bit two's complement on the wire)."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _int64_values(wire: int, value) -> list[int]:
    if wire == 0:
        return [signed(value)]
    values, pos, view = [], 0, value
    while pos < len(view):
        item, pos = read_varint(view, pos)
        values.append(signed(item))
    return values


def _float_values(wire: int, value) -> list[float]:
    if wire == 5:
        return [struct.unpack("<f", value.to_bytes(4, "little"))[0]]
    data = bytes(value)
    if len(data) % 4:
        raise ValueError("protobuf: packed float list length is not a multiple of 4")
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def _parse_feature(blob: memoryview) -> Feature:
    kind = None
    values: list = []
    for number, wire, value in iter_fields(blob):
        if number not in (1, 2, 3) or wire != 2:
            continue
        kind = number
        for item_number, item_wire, item in iter_fields(value):
            if item_number != 1:
                continue
            if number == 1:
                values.append(bytes(item))
            elif number == 2:
                values.extend(_float_values(item_wire, item))
            else:
                values.extend(_int64_values(item_wire, item))
    return values if kind else []


def parse_example(payload: bytes) -> dict[str, Feature]:
    """A serialized ``tf.train.Example`` as ``{feature name: list of bytes | ints | floats}``."""
    features: dict[str, Feature] = {}
    for number, wire, value in iter_fields(payload):
        if number != 1 or wire != 2:
            continue
        for entry_number, entry_wire, entry in iter_fields(value):
            if entry_number != 1 or entry_wire != 2:
                continue
            key, feature = None, memoryview(b"")
            for field_number, field_wire, field in iter_fields(entry):
                if field_number == 1 and field_wire == 2:
                    key = bytes(field).decode("utf-8")
                elif field_number == 2 and field_wire == 2:
                    feature = field
            if key is None:
                raise ValueError("tf.train.Example: a feature map entry has no key")
            features[key] = _parse_feature(feature)
    return features
