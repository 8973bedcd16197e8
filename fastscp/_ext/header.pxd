# Declarations of the header scanner (header.pyx), for other Cython modules to cimport.
cimport cython
from libc.stdint cimport uint8_t, uint32_t


@cython.final
cdef class HeaderScanner:
    cdef uint32_t* _tags
    cdef Py_ssize_t _ntags
    cdef uint32_t _last
    cdef readonly tuple tags

    cdef Py_ssize_t _index(self, uint32_t tag) noexcept nogil
    cdef int _scan(self, const uint8_t* buf, Py_ssize_t end, bint little, bint implicit,
                   Py_ssize_t* spans, Py_ssize_t* offset) except -1
