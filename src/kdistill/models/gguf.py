"""GGUF files: telling one apart (its first four bytes), passing it around as the path of its file,
and reading its header before transformers does, whose errors about a damaged file ("cannot
reshape array", "is not a valid JSON file") do not say what is wrong."""

from __future__ import annotations

import functools
import mmap
import os
import struct
from pathlib import Path
from typing import Any

__all__ = ["GGUF_MAGIC", "gguf_files", "gguf_problem", "is_gguf_file", "split_gguf"]


#: the four bytes a GGUF file begins with, whatever its name
GGUF_MAGIC = b"GGUF"


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that begins with the GGUF signature (:data:`GGUF_MAGIC`)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:  # missing, a folder, unreadable: not a GGUF file kdistill can load
        return False


def split_gguf(location: str) -> tuple[str, str] | None:
    """``(folder, file name)`` when ``location`` is a GGUF file, else None (a folder or a hub id).

    A GGUF model is passed around as the path of its file (``models/smollm2/model.Q4_1.gguf``);
    transformers loads it as the folder and ``gguf_file=`` the name.
    """
    path = Path(location).expanduser()
    if path.is_file() and is_gguf_file(path):
        return str(path.parent), path.name
    return None


def gguf_files(folder: str | os.PathLike[str]) -> list[str]:
    """The names of the ``.gguf`` files directly in ``folder``, sorted (none when it is not a folder)."""
    path = Path(folder)
    return sorted(entry.name for entry in path.glob("*.gguf")) if path.is_dir() else []


# ---------------------------------------------------------------------------
# GGUF files: read their header before transformers does, whose errors about a damaged file
# ("cannot reshape array", "is not a valid JSON file") do not say what is wrong
# ---------------------------------------------------------------------------

#: bytes of each GGUF scalar value type (8 is a string, 9 an array)
_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
#: the GGUF versions transformers' reader (the gguf package) reads
_GGUF_VERSIONS = (2, 3)
#: a length or count in a GGUF header past this (a terabyte) is damage; below it, past the file's
#: end, the file was cut short
_GGUF_DAMAGED = 1 << 40


class _GGUFProblem(Exception):
    """What is wrong with a GGUF file, said as the end of ``its GGUF file 'x' ...``."""


class _GGUFHeader:
    """Reads a GGUF header from the bytes of a file (a memory map), each read checked against its size."""

    def __init__(self, data: Any, size: int) -> None:
        self.data, self.size, self.offset = data, size, 0

    def _room(self, count: int, what: str, at: int | None = None) -> None:
        if count > _GGUF_DAMAGED:
            raise _GGUFProblem(
                f"has a damaged header: {what} at byte {self.offset if at is None else at:,} claims {count:,} bytes "
                f"(the file has {self.size:,})"
            )
        if self.offset + count > self.size:
            raise _GGUFProblem(
                f"is cut short: it ends at byte {self.size:,}, inside its header ({what} at byte {self.offset:,})"
            )

    def skip(self, count: int, what: str, at: int | None = None) -> None:
        self._room(count, what, at)
        self.offset += count

    def number(self, fmt: str, what: str) -> int:
        width = struct.calcsize(fmt)
        self._room(width, what)
        value = int(struct.unpack_from("<" + fmt, self.data, self.offset)[0])
        self.offset += width
        return value

    def text(self, what: str) -> str:
        at = self.offset
        length = self.number("Q", f"the length of {what}")
        start = self.offset
        self.skip(length, what, at)
        try:
            return str(self.data[start : self.offset], "utf-8")
        except UnicodeDecodeError:
            raise _GGUFProblem(f"has a damaged header: {what} at byte {start:,} is not UTF-8 text") from None

    def texts(self, count: int, key: str) -> None:
        """``count`` strings (a vocabulary: the one loop that runs long, so it is kept tight)."""
        data, size, offset, unpack = self.data, self.size, self.offset, struct.unpack_from
        for _ in range(count):
            if offset + 8 > size:
                break
            (length,) = unpack("<Q", data, offset)
            if length > _GGUF_DAMAGED or offset + 8 + length > size:
                break
            try:
                str(data[offset + 8 : offset + 8 + length], "utf-8")
            except UnicodeDecodeError:
                break
            offset += 8 + length
        else:
            self.offset = offset
            return
        self.offset = offset
        self.text(f"a value of {key!r}")  # says what is wrong with the string the loop stopped at

    def value(self, kind: int, key: str) -> Any:
        """A value of GGUF type ``kind``, read and checked; only a uint32 is kept (for general.alignment)."""
        if kind in _GGUF_SCALARS:
            found = self.number("I", f"the value of {key!r}") if kind == 4 else None
            if kind != 4:
                self.skip(_GGUF_SCALARS[kind], f"the value of {key!r}")
            return found
        if kind == _GGUF_STRING:
            self.text(f"a value of {key!r}")  # transformers decodes every string: one that is not UTF-8 fails
            return None
        if kind == _GGUF_ARRAY:
            inner = self.number("I", f"the element type of {key!r}")
            count = self.number("Q", f"the length of {key!r}")
            if inner in _GGUF_SCALARS:
                self.skip(count * _GGUF_SCALARS[inner], f"the values of {key!r}")
            elif inner == _GGUF_STRING:
                self._room(count, f"the {count:,} values of {key!r}")  # each takes 8 bytes at least
                self.texts(count, key)
            elif inner == _GGUF_ARRAY:
                self._room(count, f"the {count:,} values of {key!r}")
                for _ in range(count):
                    self.value(inner, key)
            else:
                raise _GGUFProblem(f"has a damaged header: the elements of {key!r} have type {inner}, no GGUF type")
            return None
        raise _GGUFProblem(f"has a damaged header: the value of {key!r} has type {kind}, no GGUF type")


def _gguf_data_end(path: Path) -> tuple[int, int] | None:
    """``(where the header says the tensor data ends, the file's size)``; None where the gguf
    package (which knows the tensor types' sizes) is not installed.

    Raises:
        _GGUFProblem: the file is not GGUF, of a version transformers cannot read, or damaged or
            cut short inside its header.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        magic = handle.read(4)
        if magic != b"GGUF":
            raise _GGUFProblem(f"is not a GGUF file: it starts with {magic!r}, where a GGUF file starts with b'GGUF'")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _gguf_layout(_GGUFHeader(data, size))


def _gguf_layout(header: _GGUFHeader) -> tuple[int, int] | None:
    """:func:`_gguf_data_end` of a file known to start with b'GGUF': its header read after those 4 bytes."""
    header.offset = 4
    version = header.number("I", "the version")
    if version not in _GGUF_VERSIONS:
        raise _GGUFProblem(
            f"says it is GGUF version {version:,}, and transformers reads versions 2 and 3 only"
            + ("" if version < 100 else " (a damaged header?)")
        )
    tensors, keys = header.number("Q", "the number of tensors"), header.number("Q", "the number of keys")
    if max(tensors, keys) > _GGUF_DAMAGED:
        raise _GGUFProblem(f"has a damaged header: it claims {tensors:,} tensors and {keys:,} keys")
    alignment = 32
    for _ in range(keys):
        key = header.text("a key name")
        found = header.value(header.number("I", f"the type of {key!r}"), key)
        if key == "general.alignment" and found:
            alignment = found
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:
        return None
    end = 0
    for _ in range(tensors):
        name = header.text("a tensor name")
        dims = header.number("I", f"the number of dimensions of tensor {name!r}")
        elements = 1
        for _ in range(min(dims, 64)):
            elements *= header.number("Q", f"a size of tensor {name!r}")
        kind = header.number("I", f"the type of tensor {name!r}")
        start = header.number("Q", f"the offset of tensor {name!r}")
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise _GGUFProblem(f"has a damaged header: tensor {name!r} has type {kind}, no GGUF type") from None
        end = max(end, start + elements * block_bytes // block)
    data = -(-header.offset // alignment) * alignment
    return data + end, header.size


@functools.lru_cache(maxsize=8)
def _cached_gguf_problem(path: str, size: int, mtime: int) -> str | None:
    try:
        found = _gguf_data_end(Path(path))
    except _GGUFProblem as problem:
        return str(problem)
    except OSError:
        return None  # transformers says why it cannot read the file
    if found is not None and found[0] > found[1]:
        return (
            f"is cut short: it has {found[1]:,} bytes, and its header says that its tensors run to byte "
            f"{found[0]:,} (a download or copy that stopped early?)"
        )
    return None


def gguf_problem(path: str | os.PathLike[str]) -> str | None:
    """What is wrong with the GGUF file at ``path`` (the end of a sentence ``its GGUF file 'x' ...``),
    or None where its header reads and its tensors fit in the file: a file that is no GGUF file, of
    a version transformers cannot read, damaged inside its header or cut short."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    return _cached_gguf_problem(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
