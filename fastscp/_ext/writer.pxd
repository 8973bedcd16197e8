# Declarations of the streaming Part-10 writer (writer.pyx), for other Cython modules to cimport.
cimport cython
from posix.types cimport off_t


@cython.final
cdef class InstanceFile:
    cdef int _fd
    cdef off_t _offset
    cdef readonly Py_ssize_t prefix_size
    cdef bytearray _head
    cdef Py_ssize_t _head_len
    cdef Py_ssize_t _head_limit
    cdef bytes _prefix              # not written yet: goes out with the first fragment

    cdef int _write_prefix_with(self, const unsigned char* p, const unsigned char* data, Py_ssize_t n) noexcept nogil
    cdef int write_raw(self, const unsigned char* data, Py_ssize_t n) noexcept
    cpdef write(self, const unsigned char[::1] data)
