# The element cursor and the header scanner (header.pyx), for other Cython modules to cimport.
#
# The cursor is the decoding of one element header (PS3.5 7.1.2/7.1.3) that
# every walk over a data set uses: the scanner's, the end-of-data-set walk
# (walk_to_end) and the file meta's (a HeaderScanner over group 0002).
cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef inline uint16_t _u16(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return <uint16_t>(p[0] | (p[1] << 8))
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline uint32_t _u32(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
                | (<uint32_t>p[3] << 24))
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8)
            | <uint32_t>p[3])


cdef inline uint32_t _tag(const uint8_t* p, bint little) noexcept nogil:
    return (<uint32_t>_u16(p, little) << 16) | _u16(p + 2, little)


cdef inline bint _is_vr(const uint8_t* p) noexcept nogil:
    return 0x41 <= p[0] <= 0x5A and 0x41 <= p[1] <= 0x5A


cdef inline bint _has_long_length(uint8_t a, uint8_t b) noexcept nogil:
    # PS3.5 Table 7.1-1: VRs with reserved bytes and a 32-bit length.
    if a == 0x4F:  # O: OB OD OF OL OV OW
        return b in (0x42, 0x44, 0x46, 0x4C, 0x56, 0x57)
    if a == 0x53:  # S: SQ SV
        return b == 0x51 or b == 0x56
    if a == 0x55:  # U: UC UN UR UT UV
        return b in (0x43, 0x4E, 0x52, 0x54, 0x56)
    return False


cdef inline bint _may_be_undefined(uint8_t a, uint8_t b) noexcept nogil:
    # PS3.5 7.1.2: only OB OD OF OL OV OW SQ UN may have undefined length.
    if a == 0x4F:
        return b in (0x42, 0x44, 0x46, 0x4C, 0x56, 0x57)
    return (a == 0x53 and b == 0x51) or (a == 0x55 and b == 0x4E)


cdef struct _Header:
    uint32_t tag
    uint32_t length
    Py_ssize_t size      # bytes of tag + VR + length fields
    bint implicit        # this element was read as implicit VR
    uint8_t vr0
    uint8_t vr1


cdef inline bint _read_header(const uint8_t* buf, Py_ssize_t pos, Py_ssize_t end,
                              bint little, bint implicit, _Header* h) noexcept nogil:
    """Decode the element header at pos; False if the buffer ends inside it."""
    cdef const uint8_t* p = buf + pos
    if end - pos < 8:
        return False
    h.tag = _tag(p, little)
    if implicit or not _is_vr(p + 4):
        h.implicit = True
        h.vr0 = 0
        h.vr1 = 0
        h.length = _u32(p + 4, little)
        h.size = 8
        return True
    h.implicit = False
    h.vr0 = p[4]
    h.vr1 = p[5]
    if _has_long_length(p[4], p[5]):
        if end - pos < 12:
            return False
        h.length = _u32(p + 8, little)
        h.size = 12
    else:
        h.length = _u16(p + 6, little)
        h.size = 8
    return True


@cython.final
cdef class HeaderScanner:
    cdef uint32_t* _tags
    cdef Py_ssize_t _ntags
    cdef uint32_t _last
    cdef uint32_t _first             # group walks: first tag of the group, else 0
    cdef readonly tuple tags

    cdef Py_ssize_t _index(self, uint32_t tag) noexcept nogil
    cdef int _scan(self, const uint8_t* buf, Py_ssize_t end, bint little, bint implicit,
                   Py_ssize_t* spans, Py_ssize_t* offset) except -1
