# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Socket system calls on the receive path, kept out of the framer (which
only walks bytes): ``tcp_quickack`` and ``recv_spin`` act on a descriptor
the event loop owns, without building a Python socket object per call.
Used by net/server.py.
"""

cdef extern from "<sys/socket.h>" nogil:
    int setsockopt(int sockfd, int level, int optname, const void* optval, unsigned int optlen)

cdef extern from "<netinet/in.h>":
    int IPPROTO_TCP

cdef extern from "<netinet/tcp.h>":
    int TCP_QUICKACK

from libc.errno cimport errno


def tcp_quickack(int fd):
    """Set TCP_QUICKACK on socket ``fd`` (Linux clears it again on its own,
    so the receive path sets it after every read). One system call and no
    Python socket object: uvloop's transport socket is a stand-in that builds
    a new ``socket.socket`` (and asks the kernel for its name) per call.
    Raises OSError when the kernel refuses (the socket is going away)."""
    cdef int one = 1
    if setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one)) != 0:
        raise OSError(errno, "setsockopt(TCP_QUICKACK) failed")


cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int sockfd, void* buf, size_t length, int flags)
    int MSG_DONTWAIT

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_MONOTONIC

from libc.errno cimport EAGAIN, EINTR


cdef inline long long _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


def recv_spin(int fd, unsigned char[::1] buf, long long window_ns):
    """Poll socket ``fd`` (non-blocking recv, without the GIL) for up to
    ``window_ns`` nanoseconds and read what arrives into ``buf``.

    Returns the byte count (> 0), 0 when the window passed with nothing to
    read, or -1 at end of stream or on an error (nothing is reported: the
    event loop's own read meets the same condition and handles it).

    Waking a sleeping thread costs tens of microseconds on a virtual
    machine (the idle vCPU must be woken first); over one association every
    instance pays it twice, so polling for a short while after each read
    takes it off the round trip."""
    cdef Py_ssize_t n = buf.shape[0]
    cdef ssize_t got = 0
    cdef int err = 0
    cdef long long deadline
    if n <= 0:
        return 0
    with nogil:
        deadline = _now_ns() + window_ns
        while True:
            got = recv(fd, &buf[0], n, MSG_DONTWAIT)
            if got > 0:
                break
            if got == 0:
                got = -1
                break
            err = errno
            if err != EAGAIN and err != EINTR:  # EWOULDBLOCK is EAGAIN on Linux
                got = -1
                break
            if _now_ns() >= deadline:
                got = 0
                break
    return got
