"""A Bloom filter of SOP Instance UIDs: the duplicate check's first step.

The receiver must know, for every instance it receives, whether its SOP
Instance UID is already stored. Keeping every known UID in a dict cost about
230 bytes per instance (1.86 GB at 8 M instances). The filter answers "surely
new" for almost every new UID in a few bit tests, with about 12 bits per
instance it was sized for; "maybe known" is confirmed against the index
(``IndexedInstances`` in duplicates.py), so a false positive costs one index
query, never a wrong answer.

Hashing: MD5 of the UID's UTF-8 bytes, split in two 64-bit halves as DuckDB's
``md5_number_lower`` and ``md5_number_upper`` split it, so the index builds
the filter's positions in SQL (``add_hashes``, fed by the catalog) and the
receiver computes the same positions for one UID in Python. Position ``i`` of
``k`` is ``(a + i * b) mod m`` (double hashing, Kirsch and Mitzenmacher), with
``a = lower mod m`` and ``b = upper mod (m - 1) + 1``.

MD5 is used as a spreading function here, not for security: nothing depends
on a UID's hash being hard to forge (a forged collision only costs a query).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import math
import mmap
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Protocol, cast

import xxhash

from .._ext.bloom import set_bits, test_bits

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["DEFAULT_BITS_PER_ITEM", "DEFAULT_HASHES", "UidFilter", "uid_hash"]

DEFAULT_BITS_PER_ITEM = 12
DEFAULT_HASHES = 4


# CPython's own MD5 (the ``_md5`` module that hashlib falls back on), not
# OpenSSL's: the same digest, without OpenSSL 3's per-object set-up. One
# digest per received instance: 0.30 us against 0.54 in a loop, and in the
# receive path with the index (bench_hotpath.py --observers, seven
# alternating pairs) 67.0-70.9 us an instance against 72.2-74.3.
class _Digest(Protocol):
    def digest(self) -> bytes: ...


def _builtin_md5() -> Callable[[bytes], _Digest]:
    try:
        module = importlib.import_module("_md5")
    except ImportError:  # a Python built without it
        return hashlib.md5
    return cast(Callable[[bytes], _Digest], module.md5)


_md5 = _builtin_md5()


def uid_digest(uid: str) -> bytes:
    """The MD5 digest of the UID's UTF-8 bytes: what its positions come from."""
    return _md5(uid.encode("utf-8", "surrogateescape")).digest()


def uid_hash(uid: str) -> tuple[int, int]:
    """(lower, upper): DuckDB's ``md5_number_lower(uid)``, ``md5_number_upper(uid)``."""
    digest = uid_digest(uid)
    return int.from_bytes(digest[8:], "little"), int.from_bytes(digest[:8], "little")


class UidFilter:
    """A Bloom filter sized for ``capacity`` UIDs at ``bits_per_item`` bits
    each, with ``hashes`` positions per UID. At capacity with the defaults
    (12 bits, 4 positions) about 0.6% of new UIDs are false positives; at half
    of it about 0.03%. Past capacity it still works, with more of them.

    ``add`` and ``__contains__`` are for one UID (their bit work is Cython,
    _ext/bloom.pyx: about a microsecond with the digest);
    ``add_hashes`` adds many at once from arrays of hash halves. ``add`` and
    ``add_hashes`` may run in different threads; ``__contains__`` needs no lock
    (a bit set concurrently is either seen or not: the UID is recorded elsewhere
    as well until the filter surely has it)."""

    __slots__ = ("_bits", "_last", "_lock", "added", "bits_per_item", "capacity", "hashes", "size")

    def __init__(self, capacity: int, bits_per_item: int = DEFAULT_BITS_PER_ITEM,
                 hashes: int = DEFAULT_HASHES) -> None:
        if capacity < 1 or bits_per_item < 1 or hashes < 1:
            raise ValueError("capacity, bits_per_item and hashes must be positive")
        self.capacity = capacity
        self.bits_per_item = bits_per_item
        self.hashes = hashes
        self.size = max(64, math.ceil(capacity * bits_per_item / 64) * 64)  # m, bits; whole 64-bit words
        # Anonymous memory, zero until written: a page costs memory once a bit
        # in it is set. A bytearray is zeroed (touched) whole at once: 1.5 MB
        # held from start by a server whose index is empty (issue 23).
        self._bits = mmap.mmap(-1, self.size // 8)
        self._lock = threading.Lock()
        self.added = 0  # UIDs added (with repeats): how full it is
        # the last UID's digest: the receiver asks about a UID before its
        # rename and adds it after, so its hash is computed once, not twice
        self._last: tuple[str, bytes] = ("", b"")

    @property
    def nbytes(self) -> int:
        return len(self._bits)

    def _digest(self, uid: str) -> bytes:
        last = self._last  # one read: another thread may replace it meanwhile
        if last[0] == uid and last[1]:
            return last[1]
        digest = uid_digest(uid)
        self._last = (uid, digest)
        return digest

    def add(self, uid: str) -> None:
        digest = self._digest(uid)
        with self._lock:
            set_bits(self._bits, digest, self.size, self.hashes)
            self.added += 1

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, str):
            return False
        return test_bits(self._bits, self._digest(uid), self.size, self.hashes)

    def add_hashes(self, lower: npt.NDArray[np.uint64], upper: npt.NDArray[np.uint64]) -> None:
        """Add the UIDs whose hash halves (``uid_hash``) are ``lower[j]``, ``upper[j]``."""
        import numpy as np

        if len(lower) != len(upper):
            raise ValueError("lower and upper differ in length")
        if not len(lower):
            return
        m = np.uint64(self.size)
        a = np.asarray(lower, dtype=np.uint64) % m
        b = np.asarray(upper, dtype=np.uint64) % (m - np.uint64(1)) + np.uint64(1)
        view = np.frombuffer(self._bits, dtype=np.uint8)
        for i in range(self.hashes):
            # a + i*b < (1 + hashes) * m: no overflow while m < 2**60 / hashes
            positions = np.sort((a + np.uint64(i) * b) % m)
            index = positions >> np.uint64(3)
            values = np.left_shift(np.uint8(1), (positions & np.uint64(7)).astype(np.uint8))
            # several positions can fall in one byte: OR them together first
            starts = np.flatnonzero(np.concatenate(([True], index[1:] != index[:-1])))
            merged = np.bitwise_or.reduceat(values, starts)
            with self._lock:
                view[index[starts]] |= merged
        with self._lock:
            self.added += len(lower)

    def expected_false_positive_rate(self) -> float:
        """(1 - e^(-k n / m))^k for the UIDs added so far."""
        return float((1.0 - math.exp(-self.hashes * self.added / self.size)) ** self.hashes)

    def write_bits(self, fh: IO[bytes]) -> None:
        """Write the bit array (``nbytes`` bytes) to ``fh``. Call it while
        nothing adds (at shutdown): the bytes are not copied under the lock."""
        fh.write(memoryview(self._bits))

    def bits_digest(self) -> int:
        """xxh3-64 of the bit array: a saved copy's check."""
        return xxhash.xxh3_64_intdigest(memoryview(self._bits))

    @classmethod
    def read(cls, fh: io.BufferedIOBase, capacity: int, bits_per_item: int, hashes: int, added: int) -> UidFilter:
        """A filter with the given shape, its bits read from ``fh`` (what
        ``write_bits`` wrote for that shape). Raises ValueError when ``fh``
        ends early."""
        f = cls(capacity, bits_per_item, hashes)
        view = memoryview(f._bits)
        got = 0
        while got < len(view):
            n = fh.readinto(view[got:])
            if not n:
                raise ValueError(f"filter bits end after {got} of {len(view)} bytes")
            got += n
        f.added = added
        return f

    @classmethod
    def for_rows(cls, rows: int, minimum: int = 1_000_000) -> UidFilter:
        """A filter for an index of ``rows`` instances that will grow: room for
        twice as many, and at least ``minimum`` (1 M: 1.5 MB)."""
        return cls(max(2 * rows, minimum))
