"""Packed columns: arrays of numbers as little-endian bytes inside an Avro ``bytes`` field.

Used where a record would otherwise hold a long array or map of small records
(a user's friends, a message of friend updates): fastavro spends a few
microseconds per nested record, ``array`` a few per column. Integers are
written in the narrowest of uint8 / uint16 / uint32 / int64 that holds every
value, after a one-byte typecode; floats as float64, so values come back
exactly.
"""

from __future__ import annotations

import sys
from array import array

_LITTLE = sys.byteorder == "little"
#: typecode -> item size; "I" is 4 bytes wherever this runs (checked at import)
INT_CODES = {"B": 1, "H": 2, "I": 4, "q": 8}
assert all(array(code).itemsize == size for code, size in INT_CODES.items())


def column(code: str, values) -> bytes:
    """``values`` as one little-endian column of array typecode ``code``."""
    packed = array(code, values)
    if not _LITTLE:
        packed.byteswap()
    return packed.tobytes()


def int_column(values: list[int]) -> bytes:
    """The narrowest integer column that holds every value, after its typecode."""
    low, high = (min(values), max(values)) if values else (0, 0)
    if low >= 0 and high < 1 << 32:
        code = "B" if high < 1 << 8 else "H" if high < 1 << 16 else "I"
    else:
        code = "q"
    return code.encode() + column(code, values)


class Columns:
    """Reads the columns of a packed field in order; ValueError if they do not fit it."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def _take(self, size: int) -> bytes:
        end = self._at + size
        if end > len(self._data):
            raise ValueError(f"packed column overruns its field ({end} > {len(self._data)} bytes)")
        chunk = self._data[self._at : end]
        self._at = end
        return chunk

    def _array(self, code: str, n: int) -> array:
        values = array(code)
        values.frombytes(self._take(n * values.itemsize))
        if not _LITTLE:
            values.byteswap()
        return values

    def floats(self, n: int) -> array:
        return self._array("d", n)

    def octets(self, n: int) -> bytes:
        """``n`` uint8 values."""
        return self._take(n)

    def flags(self, n: int) -> list[bool]:
        return [flag == 1 for flag in self._take(n)]

    def ints(self, n: int, code: str | None = None) -> array:
        """``n`` integers: of ``code``, or of the typecode written before them."""
        if code is None:
            code = self._take(1).decode("ascii", "replace")
            if code not in INT_CODES:
                raise ValueError(f"unknown integer column typecode {code!r}")
        return self._array(code, n)

    def end(self) -> None:
        if self._at != len(self._data):
            raise ValueError(f"{len(self._data) - self._at} bytes left over after the packed columns")
