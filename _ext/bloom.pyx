# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The Bloom filter's bit work for one UID (storage/uidfilter.py).

A UID's ``k`` positions in a filter of ``m`` bits come from the MD5 digest
of its UTF-8 bytes: ``lower`` and ``upper`` are the digest's second and
first eight bytes read little-endian (DuckDB's ``md5_number_lower`` and
``md5_number_upper``), and position ``i`` is ``(a + i * b) mod m`` with
``a = lower mod m`` and ``b = upper mod (m - 1) + 1`` (double hashing). The
filter's Python code does the same for many UIDs at once with numpy
(``add_hashes``); these two functions are the per-UID path of the receiver.
"""

from libc.stdint cimport uint8_t, uint64_t


cdef inline uint64_t _le64(const uint8_t* p) noexcept nogil:
    return ((<uint64_t>p[0]) | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48) | (<uint64_t>p[7] << 56))


cdef inline int _steps(Py_ssize_t nbytes, const uint8_t[::1] digest, uint64_t m, int k,
                       uint64_t* a, uint64_t* b) except -1:
    """Check the arguments; the first position ``a`` and the step ``b``."""
    if digest.shape[0] != 16:
        raise ValueError("an MD5 digest is 16 bytes")
    if m < 2 or k < 1:
        raise ValueError("m must be at least 2 and k positive")
    if <uint64_t>nbytes * 8 < m:
        raise ValueError("bits hold fewer than m bits")
    a[0] = _le64(&digest[8]) % m
    b[0] = _le64(&digest[0]) % (m - 1) + 1
    return 0


def test_bits(const uint8_t[::1] bits, const uint8_t[::1] digest, uint64_t m, int k):
    """True when every one of the ``k`` positions of ``digest`` is set in ``bits`` (``m`` bits)."""
    cdef uint64_t p, b
    cdef int i
    _steps(bits.shape[0], digest, m, k, &p, &b)
    for i in range(k):
        if not (bits[p >> 3] & (1 << (p & 7))):
            return False
        p = (p + b) % m  # a + i*b mod m, without overflow: p, b < m < 2**63
    return True


def set_bits(uint8_t[::1] bits, const uint8_t[::1] digest, uint64_t m, int k):
    """Set the ``k`` positions of ``digest`` in ``bits`` (``m`` bits)."""
    cdef uint64_t p, b
    cdef int i
    _steps(bits.shape[0], digest, m, k, &p, &b)
    for i in range(k):
        bits[p >> 3] |= <uint8_t>(1 << (p & 7))
        p = (p + b) % m
