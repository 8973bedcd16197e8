# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Streaming Part-10 writer: dataset fragments go straight from the receive
buffer into the temp file (pwrite, no Python bytes per fragment).

The file is opened by the caller (storage/store.py owns naming and paths);
``InstanceFile`` owns the descriptor from then on. The Part-10 prefix
(preamble, "DICM", file meta group) is written first, then each fragment at
the running offset, so a small instance costs one pwritev. No space is
reserved ahead: fallocate() in growing extents, trimmed at the end, was
slower on ext4 than letting the filesystem's delayed allocation place the
blocks (docs/benchmark.md, "Preallocation dropped").

The first ``head_limit`` bytes of the dataset are also kept in memory for the
header-only parse.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EBADF, EINTR, ENOSPC
from libc.string cimport memcpy
from posix.unistd cimport close, pwrite
from posix.uio cimport iovec, pwritev
from posix.types cimport off_t

cdef extern from *:
    """
    #include <fcntl.h>
    #include <errno.h>
    #include <unistd.h>
    #include <sys/syscall.h>
    #ifndef RENAME_NOREPLACE
    #define RENAME_NOREPLACE (1 << 0)
    #endif
    static int fastscp_rename_noreplace(const char *src, const char *dst) {
    #ifdef SYS_renameat2
        return (int)syscall(SYS_renameat2, AT_FDCWD, src, AT_FDCWD, dst, RENAME_NOREPLACE);
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }
    """
    int fastscp_rename_noreplace(const char *src, const char *dst) nogil

import os as _os


cdef int write_all(int fd, const unsigned char* data, Py_ssize_t length, off_t offset) nogil:
    """pwrite until done; 0 or an errno."""
    cdef Py_ssize_t n
    while length > 0:
        n = pwrite(fd, data, length, offset)
        if n < 0:
            if errno == EINTR:
                continue
            return errno
        if n == 0:
            return ENOSPC  # a zero-length write cannot make progress
        data += n
        length -= n
        offset += n
    return 0


cdef class InstanceFile:
    # attributes: writer.pxd

    def __cinit__(self, int fd, bytes prefix, Py_ssize_t head_limit=16384):
        self._fd = fd
        self._head_limit = head_limit
        self._head = bytearray(head_limit)
        # The prefix is written with the first fragment, in one pwritev: a
        # small instance then costs one write system call, not two.
        self._prefix = prefix if len(prefix) else None
        self._offset = len(prefix)
        self.prefix_size = len(prefix)

    cdef int _write_prefix_with(self, const unsigned char* p, const unsigned char* data, Py_ssize_t n) noexcept nogil:
        """pwritev(prefix p, data) at offset 0; 0 or an errno."""
        cdef iovec iov[2]
        cdef Py_ssize_t done, plen = self.prefix_size
        iov[0].iov_base = <void*>p
        iov[0].iov_len = plen
        iov[1].iov_base = <void*>data
        iov[1].iov_len = n
        while True:
            done = pwritev(self._fd, iov, 2, 0)
            if done >= 0 or errno != EINTR:
                break
        if done < 0:
            return errno
        if done < plen:  # short write: finish it plainly
            return write_all(self._fd, p + done, plen - done, done) or write_all(self._fd, data, n, plen)
        if done < plen + n:
            return write_all(self._fd, data + (done - plen), n - (done - plen), done)
        return 0

    @property
    def fd(self):
        return self._fd

    @property
    def dataset_size(self):
        return self._offset - self.prefix_size

    @property
    def head(self):
        """The first bytes of the dataset (up to head_limit), copied once."""
        return PyBytes_FromStringAndSize(<char*>self._head, self._head_len)

    @property
    def head_complete(self):
        """True when the whole dataset is in ``head``."""
        return self._offset - self.prefix_size <= self._head_len

    cdef int write_raw(self, const unsigned char* data, Py_ssize_t n) noexcept:
        """Append ``n`` bytes of the data set (the prefix goes out with the
        first); 0, or an errno with nothing counted (EBADF once closed).
        Kept out of the head until written, so a failed write can be done
        again from the same bytes."""
        cdef Py_ssize_t keep
        cdef int err = 0
        cdef const unsigned char* pre = NULL
        if n == 0:
            return 0
        if self._fd < 0:
            return EBADF
        if self._prefix is not None:
            pre = <const unsigned char*>(<char*>self._prefix)
        with nogil:
            if pre != NULL:
                err = self._write_prefix_with(pre, data, n)
            else:
                err = write_all(self._fd, data, n, self._offset)
        if err:
            return err
        if self._head_len < self._head_limit:
            keep = self._head_limit - self._head_len
            if keep > n:
                keep = n
            memcpy(<unsigned char*>self._head + self._head_len, data, keep)
            self._head_len += keep
        self._prefix = None
        self._offset += n
        return 0

    cpdef write(self, const unsigned char[::1] data):
        cdef Py_ssize_t n = data.shape[0]
        cdef int err
        if n == 0:
            return
        err = self.write_raw(&data[0], n)
        if err == EBADF and self._fd < 0:
            raise ValueError("write to a closed InstanceFile")
        if err:
            raise OSError(err, "cannot write dataset")

    def finish(self):
        """The file is complete (an empty dataset: the prefix is written
        now); returns the file size. The fd stays open."""
        cdef int err
        cdef const unsigned char* p
        if self._prefix is not None:  # an empty dataset: the prefix alone
            p = <const unsigned char*>(<char*>self._prefix)
            err = write_all(self._fd, p, self.prefix_size, 0)
            if err:
                raise OSError(err, "cannot write file meta")
            self._prefix = None
        return self._offset

    def close(self):
        if self._fd >= 0:
            close(self._fd)
            self._fd = -1

    def __dealloc__(self):
        if self._fd >= 0:
            close(self._fd)


def rename_noreplace(src, dst):
    """Rename ``src`` to ``dst`` unless ``dst`` exists, in one system call
    (Linux renameat2 with RENAME_NOREPLACE): the existence check and the
    rename are one atomic step. Raises FileExistsError when ``dst`` exists,
    and OSError EINVAL/ENOSYS where the kernel or filesystem lacks the flag
    (the caller falls back to a check and ``os.replace``)."""
    cdef bytes s = _os.fsencode(src)
    cdef bytes d = _os.fsencode(dst)
    cdef const char* cs = s
    cdef const char* cd = d
    cdef int rc, err
    with nogil:
        rc = fastscp_rename_noreplace(cs, cd)
        err = errno
    if rc != 0:
        raise OSError(err, _os.strerror(err), src, None, dst)
