"""The one reader of user-given .npz files, which it treats as hostile input.

    with open_npz(path) as archive:          # a regular file holding a zip of .npy members
        archive.files                         # array names (member names without .npy)
        archive.info("x").shape               # from the .npy header only: nothing is loaded
        archive.read("x", rows=64)            # the first 64 samples, read from the member stream
        for part in archive.rows("x", 8):     # batches of 8 samples, one at a time

What is refused, each with an InputError naming the file and the array (exit 2 in the CLI):
  * a path that is not a regular file: a FIFO or device is refused from its stat, never read (opened
    with O_NONBLOCK, so the open itself cannot block);
  * a zip member that is not a .npy array, a .npy header numpy cannot parse, a header whose declared
    size (shape x itemsize) differs from the member's uncompressed size (a header that lies);
  * object dtypes (pickles are never loaded), complex numbers where real ones are expected (their
    imaginary part would be dropped), other dtypes a caller does not accept;
  * a 0-d array where one row per sample is expected;
  * reading more than hwact.limits.MAX_ARRAY_BYTES of one array. Only the rows asked for are read,
    so a file claiming 250,000 images costs the memory of the rows used, not of the claim.
Compressed members are fine: zipfile decompresses them as a stream.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from numpy.lib import format as npy

from hwact.errors import InputError
from hwact.limits import MAX_ARRAY_BYTES, format_bytes

REAL = "iuf"          # dtype kinds: signed, unsigned integers and floats
INTEGER = "iu"
ANY = "biufcSUV"      # everything but objects (and datetimes)
_KIND_WORDS = {REAL: "real numbers", INTEGER: "integers", "biuf": "numbers or booleans", ANY: "plain data"}
_CHUNK = 1 << 24      # bytes per read from a member stream


@dataclass(frozen=True)
class ArrayInfo:
    """What a member's .npy header declares; `offset` is where its data starts in the member."""

    name: str
    member: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape[1:])

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)

    def describe(self) -> str:
        return f"{tuple(self.shape)} {self.dtype}"


class Npz:
    """An open .npz archive whose headers are read on demand (see the module docstring)."""

    def __init__(self, path: str | Path, handle, archive: zipfile.ZipFile):
        self.path, self._handle, self._zip = str(path), handle, archive
        self._members = {}
        for member in archive.infolist():
            if member.is_dir():
                continue
            if not member.filename.endswith(".npy"):
                raise InputError(f"{self.path}: member '{member.filename}' is not a .npy array",
                                 hint="an .npz holds only .npy arrays (numpy.savez)")
            self._members[member.filename[:-4]] = member
        self._infos: dict[str, ArrayInfo] = {}

    @property
    def files(self) -> list[str]:
        return list(self._members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def __enter__(self) -> "Npz":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._handle.close()

    # ------------------------------------------------------------------------------------- headers
    def info(self, name: str) -> ArrayInfo:
        """Shape and dtype of array `name` from its header; the data is not read."""
        if name not in self._infos:
            if name not in self._members:
                raise InputError(f"{self.path}: no array named '{name}'",
                                 hint=f"arrays found: {', '.join(self.files) or 'none'}")
            self._infos[name] = self._read_header(self._members[name], name)
        return self._infos[name]

    def _read_header(self, member: zipfile.ZipInfo, name: str) -> ArrayInfo:
        where = f"{self.path}: member '{member.filename}'"
        try:
            with self._zip.open(member) as stream:
                version = npy.read_magic(stream)
                if version == (1, 0):
                    shape, fortran_order, dtype = npy.read_array_header_1_0(stream)
                elif version == (2, 0):
                    shape, fortran_order, dtype = npy.read_array_header_2_0(stream)
                else:
                    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
                offset = stream.tell()
        except Exception as exc:  # numpy's header parser, zipfile, zlib: all mean "not a valid member"
            raise InputError(f"{where} is not a valid .npy array ({_cause(exc)})") from exc
        if dtype.hasobject:
            raise InputError(f"{where} has dtype {dtype}: arrays of Python objects are never loaded "
                             "(unpickling runs code)", hint="save plain numeric arrays")
        if any(d < 0 for d in shape):
            raise InputError(f"{where} declares a negative dimension: shape {tuple(shape)}")
        info = ArrayInfo(name, member.filename, tuple(shape), dtype, fortran_order, offset)
        if offset + info.nbytes != member.file_size:
            raise InputError(f"{where} declares {info.describe()} = {format_bytes(info.nbytes)} of data, "
                             f"but holds {format_bytes(max(member.file_size - offset, 0))}",
                             hint="the file is truncated or was not written by numpy")
        return info

    def _checked(self, name: str, kinds: str, per_sample: bool) -> ArrayInfo:
        info = self.info(name)
        if info.dtype.kind not in kinds:
            if info.dtype.kind == "c" and "c" not in kinds:
                raise InputError(f"{self.path}: array '{name}' has dtype {info.dtype}, expected real numbers "
                                 "(the imaginary part would be dropped)", hint="save the real part, or both parts")
            raise InputError(f"{self.path}: array '{name}' has dtype {info.dtype}, expected "
                             f"{_KIND_WORDS.get(kinds, 'dtype kinds ' + kinds)}")
        if per_sample and not info.shape:
            raise InputError(f"{self.path}: array '{name}' is a single value (0-d), expected one row per sample",
                             hint="give it a first (sample) dimension")
        return info

    # ---------------------------------------------------------------------------------------- data
    def read(self, name: str, rows: int | None = None, kinds: str = REAL, per_sample: bool = True) -> np.ndarray:
        """Array `name` (its first `rows` rows when given), native byte order, at most MAX_ARRAY_BYTES."""
        info = self._checked(name, kinds, per_sample or rows is not None)
        if not info.shape:
            return self._read_all(info)
        count = info.shape[0] if rows is None else min(rows, info.shape[0])
        if info.fortran_order:  # column-major rows are not contiguous: the whole array or nothing
            return self._read_all(info)[:count]
        self._check_size(info, count * info.row_bytes, f"reading {count} rows")
        with self._zip.open(info.member) as stream:
            _skip(stream, info.offset)
            return self._rows_from(stream, info, count)

    def rows(self, name: str, batch: int, limit: int | None = None, kinds: str = REAL) -> Iterator[np.ndarray]:
        """The first `limit` rows (all when None) of `name`, `batch` rows at a time, read as they are used."""
        info = self._checked(name, kinds, True)
        count = info.shape[0] if limit is None else min(limit, info.shape[0])
        if info.fortran_order:
            whole = self._read_all(info)
            yield from (whole[start:start + batch] for start in range(0, count, batch))
            return
        self._check_size(info, min(batch, count) * info.row_bytes, f"a batch of {min(batch, count)} rows")
        with self._zip.open(info.member) as stream:
            _skip(stream, info.offset)
            for start in range(0, count, batch):
                yield self._rows_from(stream, info, min(batch, count - start))

    def _check_size(self, info: ArrayInfo, needed: int, what: str) -> None:
        if needed > MAX_ARRAY_BYTES:
            raise InputError(f"{self.path}: array '{info.name}' {info.describe()}: {what} would need "
                             f"{format_bytes(needed)}; the limit is {format_bytes(MAX_ARRAY_BYTES)} per array",
                             hint="give fewer or smaller samples")

    def _read_all(self, info: ArrayInfo) -> np.ndarray:
        self._check_size(info, info.nbytes, "reading it whole")
        with self._zip.open(info.member) as stream:
            _skip(stream, info.offset)
            data = self._bytes(stream, info, info.nbytes)
        order = "F" if info.fortran_order else "C"
        return _native(data.view(info.dtype).reshape(info.shape, order=order) if info.dtype.itemsize
                       else np.zeros(info.shape, info.dtype))

    def _rows_from(self, stream, info: ArrayInfo, count: int) -> np.ndarray:
        shape = (count, *info.shape[1:])
        if not info.dtype.itemsize:
            return np.zeros(shape, info.dtype)
        return _native(self._bytes(stream, info, count * info.row_bytes).view(info.dtype).reshape(shape))

    def _bytes(self, stream, info: ArrayInfo, size: int) -> np.ndarray:
        """Exactly `size` bytes from `stream`, copied in chunks (never a second full-size buffer)."""
        buffer = np.empty(size, np.uint8)
        done = 0
        try:
            while done < size:
                chunk = stream.read(min(_CHUNK, size - done))
                if not chunk:
                    break
                buffer[done:done + len(chunk)] = np.frombuffer(chunk, np.uint8)
                done += len(chunk)
        except Exception as exc:  # a corrupt compressed stream
            raise InputError(f"{self.path}: member '{info.member}' cannot be read ({_cause(exc)})") from exc
        if done < size:
            raise InputError(f"{self.path}: member '{info.member}' ends after {format_bytes(done)} of data, "
                             f"its header declares {info.describe()}", hint="the file is truncated")
        return buffer


def open_npz(path: str | Path) -> Npz:
    """Open `path` as an .npz of .npy arrays; refuses anything but a regular file without blocking."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:  # permissions, a name too long, a NUL byte in the name
        raise InputError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or _cause(exc)})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{path}: is a folder, not an .npz file")
        if not stat.S_ISREG(mode):
            raise InputError(f"{path}: not a regular file (a FIFO, socket or device); an .npz file is expected")
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        archive = zipfile.ZipFile(handle)
    except Exception as exc:
        handle.close()
        raise InputError(f"{path}: not a readable .npz archive ({_cause(exc)})") from exc
    try:
        return Npz(path, handle, archive)
    except BaseException:
        archive.close()
        handle.close()
        raise


def load_arrays(path: str | Path, kinds: str = ANY) -> dict[str, np.ndarray]:
    """Every array of a small .npz (a state or cache file), each read whole within MAX_ARRAY_BYTES."""
    with open_npz(path) as archive:
        return {name: archive.read(name, kinds=kinds, per_sample=False) for name in archive.files}


def _skip(stream, count: int) -> None:
    while count > 0:
        chunk = stream.read(min(count, _CHUNK))
        if not chunk:
            return
        count -= len(chunk)


def _native(array: np.ndarray) -> np.ndarray:
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _cause(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
