"""End-to-end verification of the bytes a simulation moves: per-page digests and CRC-32s.

Kernel: none. Every transfer of a scenario moves real bytes through the DMA addresses the
importer was handed; this module is how the runner proves they are the right bytes.

Each exported buffer has a :class:`BufferTruth`: the expected content of every 4 KiB page as a
64-bit digest (8 bytes per page — 0.2 % of the buffer, so a 1 GiB buffer costs 2 MiB, not a
second copy). The digest of a page is ``Σ word[i] * W[i] mod 2**64`` over its 512 little-endian
64-bit words with fixed odd random weights ``W`` — one ``einsum`` over the data, at memory speed.
It is not cryptographic; it catches what matters here: a page read from the wrong place (a stale
mapping after a move: the old pages are poisoned on free), a page the exporter lost or
corrupted while evicting it, a write that landed somewhere else. Any single changed word changes
the digest (the weights are odd, so invertible mod 2**64).

What the runner checks
    * a DMA read by an importer: the digests of the bytes it got equal the buffer's expected
      digests for those pages;
    * a DMA write by an importer: the bytes read back through the **exporter's** view of the
      buffer (its current physical pages, a different translation from the importer's) have the
      digests of the bytes written; the expected digests are then updated;
    * at the end of a run, every buffer's whole content against its expected digests.

The report also carries CRC-32s (``zlib.crc32``), which humans compare: the CRC of each
transfer's bytes, combined per stream so the value does not depend on completion order.
"""

from __future__ import annotations

import errno
import struct
import zlib

import numpy as np

from dmabuf.errors import DmaBufError
from dmabuf.mm.phys import PAGE_SIZE

__all__ = ["BufferTruth", "StreamChecksum", "fill_bytes", "page_digests"]

_WORDS = PAGE_SIZE // 8
_W = (np.random.default_rng(0x5EED_D16E57).integers(1, 1 << 62, size=_WORDS, dtype=np.uint64)
      * np.uint64(2) + np.uint64(1))


def page_digests(data: np.ndarray) -> np.ndarray:
    """64-bit digest of each 4 KiB page of ``data`` (see the module docstring).

    Args:
        data: uint8 array, length a multiple of ``PAGE_SIZE``.
    Context: pure; never blocks.
    Returns: uint64 array, one digest per page.
    Raises: DmaBufError(EINVAL) for a length that is not a page multiple.
    Kernel: none.
    """
    a = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    if a.size % PAGE_SIZE:
        raise DmaBufError(errno.EINVAL, f"{a.size} bytes is not a whole number of pages")
    v = a.view(np.uint64).reshape(-1, _WORDS)
    return np.asarray(np.einsum("ij,j->i", v, _W), dtype=np.uint64)


def fill_bytes(rng: np.random.Generator, nbytes: int, how: str) -> np.ndarray:
    """Initial content of a buffer: ``random`` (seeded), ``zero`` or ``pattern`` bytes.

    ``pattern`` writes each page's index (little-endian u64) in every word, so a misplaced page
    is recognisable in a hex dump.

    Args:
        rng: the seeded generator (used for ``random`` only).
        nbytes: a page multiple.
        how: ``"random"``, ``"zero"`` or ``"pattern"``.
    Context: pure; never blocks.
    Returns: a uint8 array of ``nbytes``.
    Raises: DmaBufError(EINVAL) for an unknown ``how``.
    Kernel: none.
    """
    if how == "zero":
        return np.zeros(nbytes, np.uint8)
    if how == "pattern":
        pages = np.arange(nbytes // PAGE_SIZE, dtype=np.uint64)
        return np.repeat(pages, _WORDS).view(np.uint8)
    if how == "random":
        return rng.integers(0, np.iinfo(np.uint64).max, size=nbytes // 8, dtype=np.uint64,
                            endpoint=True).view(np.uint8)
    raise DmaBufError(errno.EINVAL, f"unknown fill {how!r}")


class BufferTruth:
    """Expected per-page digests of one buffer, updated by writes.

    Args:
        name: the buffer's name (for messages).
        data: its initial content.
    """

    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name = name
        self.size = int(data.size)
        self.digests = page_digests(data)
        self.writes = 0

    def check(self, offset: int, data: np.ndarray) -> str | None:
        """Compare ``data`` (bytes at ``offset``) with the expected content.

        Args:
            offset: byte offset (page aligned).
            data: the bytes read.
        Context: pure.
        Returns: None when every page matches; else a message naming the first bad page.
        Raises: nothing.
        Kernel: none.
        """
        first = offset // PAGE_SIZE
        got = page_digests(data)
        want = self.digests[first:first + got.size]
        bad = np.flatnonzero(got != want)
        if bad.size == 0:
            return None
        return (f"{bad.size} of {got.size} pages of buffer {self.name!r} differ from the "
                f"expected content, first at offset {(first + int(bad[0])) * PAGE_SIZE:#x}")

    def update(self, offset: int, data: np.ndarray) -> None:
        """Record that ``data`` was written at ``offset``.

        Context: pure. Returns: None. Raises: nothing. Kernel: none.
        """
        first = offset // PAGE_SIZE
        d = page_digests(data)
        self.digests[first:first + d.size] = d
        self.writes += 1

    def fingerprint(self) -> str:
        """CRC-32 of the digest table: one hex string identifying the expected content."""
        return f"{zlib.crc32(self.digests.tobytes()):08x}"


class StreamChecksum:
    """An order-independent CRC-32 of a stream: ``Σ crc32(index, crc32(bytes)) mod 2**32``.

    A sum, not an XOR: CRC-32 is affine over GF(2), so an XOR of per-transfer values can cancel
    (two transfers of the same bytes, indices whose XOR is zero) — a sum does not.
    """

    def __init__(self) -> None:
        self.value = 0
        self.transfers = 0

    def add(self, index: int, data: np.ndarray) -> int:
        """Fold transfer ``index``'s bytes in; return their own CRC-32."""
        crc = zlib.crc32(np.ascontiguousarray(data).data)
        self.value = (self.value + zlib.crc32(struct.pack("<Q", index), crc)) & 0xFFFFFFFF
        self.transfers += 1
        return crc

    @property
    def hex(self) -> str:
        """The combined value as 8 hex digits."""
        return f"{self.value:08x}"
