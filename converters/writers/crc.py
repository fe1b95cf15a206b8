"""CRC32 of concatenated pieces from the pieces' own CRCs (zlib's crc32_combine, which Python's
zlib does not expose), so a tensor's parts can be written by several threads at once and the
torch zip record still gets the CRC of the whole.

CRC32 is linear over GF(2): appending n zero bytes to a message multiplies its CRC by a fixed
32x32 bit matrix, the n-th power of the one-zero-byte operator. The matrices for 2^k bytes are
squared once and kept, so a combine is at most 64 matrix-vector products (~0.1 ms).
"""
from __future__ import annotations

import threading

_POLY = 0xEDB88320  # the reflected CRC-32 polynomial zlib uses
_powers: list[list[int]] = []  # _powers[k]: the operator for 2**k zero bytes
_lock = threading.Lock()


def _times(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, column) for column in matrix]


def _operator(k: int) -> list[int]:
    with _lock:
        if not _powers:
            one_bit = [_POLY] + [1 << n for n in range(31)]  # one zero bit
            byte = _square(_square(_square(one_bit)))  # 8 zero bits
            _powers.append(byte)
        while len(_powers) <= k:
            _powers.append(_square(_powers[-1]))
        return _powers[k]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC32 of A + B, given crc1 = crc32(A), crc2 = crc32(B) and len2 = len(B)."""
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _times(_operator(k), crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2
