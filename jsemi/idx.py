"""IDX files (the MNIST / Fashion-MNIST format): reading and validating them.  Re-exported by ``jsemi.data``."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np


class IDXFormatError(ValueError):
    """An IDX file is corrupt, truncated or not an IDX file at all."""


# IDX type code -> big-endian NumPy dtype (http://yann.lecun.com/exdb/mnist/, "IDX file format").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (plain or gzip-compressed, detected from its bytes).

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then each
    dimension as a big-endian uint32; the data follow, big-endian.  Returns an array
    of that shape in native byte order.  Raises :class:`IDXFormatError` for a bad
    magic number, an unknown type code, a truncated file, trailing bytes or a
    corrupt gzip stream.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IDXFormatError(f"{path}: corrupt or truncated gzip stream ({err})") from err
    return parse_idx(raw, source=str(path))


def parse_idx(buf: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parses the bytes of an (uncompressed) IDX file; see :func:`read_idx`."""
    if len(buf) < 4:
        raise IDXFormatError(f"{source}: {len(buf)} bytes, too short for the 4-byte IDX magic number")
    if buf[0] != 0 or buf[1] != 0:
        raise IDXFormatError(
            f"{source}: not an IDX file (magic number starts with 0x{buf[:2].hex()}, expected 0x0000)"
        )
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{k:02X}" for k in _IDX_DTYPES)
        raise IDXFormatError(f"{source}: unknown IDX data type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise IDXFormatError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IDXFormatError(
            f"{source}: truncated IDX header ({ndim} dimensions need {header} bytes, file has {len(buf)})"
        )
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = math.prod(dims)
    expected, actual = count * dtype.itemsize, len(buf) - header
    if actual < expected:
        raise IDXFormatError(
            f"{source}: truncated IDX data: shape {dims} of {dtype.name} needs {expected} bytes, found {actual}"
        )
    if actual > expected:
        raise IDXFormatError(
            f"{source}: {actual - expected} unexpected bytes after the IDX data of shape {dims}"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, stem: str) -> Path | None:
    """The IDX file for e.g. stem 'train-images-idx3' in folder (plain, .gz, or '.idx' spelling)."""
    prefix, kind, idx = stem.split("-")
    for base in (f"{stem}-ubyte", f"{prefix}-{kind}.{idx}-ubyte"):
        for candidate in (folder / base, folder / f"{base}.gz"):
            if candidate.is_file():
                return candidate
    return None
