# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""PDU framing and P-DATA reassembly over one receive buffer (PS3.8 9.3, PS3.7 E).

The socket layer reads straight into this object's buffer (``get_buffer`` /
``buffer_updated``, the BufferedProtocol contract). ``next_event`` walks the
bytes in place:

* a PDU header is 6 bytes (type, reserved, 32-bit big-endian length); nothing
  is decoded until the whole PDU is in the buffer ("not yet" is ``None``);
* a P-DATA-TF PDU (type 04H) is walked PDV item by PDV item (PS3.8 9.3.5.1):
  command fragments are gathered into one small ``bytes`` per command set;
  dataset fragments are handed on as ``memoryview`` slices of the buffer, no
  copy. A slice is valid until the next ``get_buffer`` call;
* any other PDU comes back whole as ``bytes`` (they are small and rare);
* with a sink armed (``sink_dataset``), a data set's fragments but the last
  go to its ``InstanceFile`` (writer.pxd) and hash here, without an event.

Rule breaks raise ``FramingError`` carrying the A-ABORT reason the caller
should send (PS3.8 9.3.8: 1 unrecognized PDU, 2 unexpected PDU, 6 invalid
PDU parameter value).

``decode_command`` decodes a command set (group 0000, always implicit VR
little endian, PS3.7 6.3.1 and E.1) into {tag: value}.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memmove, memcpy

EV_PDU = 1
EV_COMMAND = 2
EV_DATASET = 3

DEF PDU_HEADER = 6
DEF MAX_COMMAND = 65536

ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_INVALID_PARAMETER = 6


class FramingError(Exception):
    """The peer broke a framing rule; ``reason`` is the A-ABORT reason code."""

    def __init__(self, int reason, str message):
        super().__init__(message)
        self.reason = reason


cdef inline Py_ssize_t be32(const unsigned char* p) nogil:
    return (<Py_ssize_t>p[0] << 24) | (<Py_ssize_t>p[1] << 16) | (<Py_ssize_t>p[2] << 8) | p[3]


cdef class PDUFramer:
    # attributes: framer.pxd

    def __cinit__(self, Py_ssize_t max_pdata=131072, Py_ssize_t max_other=1 << 20):
        if max_pdata < 8 or max_other < 8:
            raise ValueError("PDU limits too small")
        self.max_pdata = max_pdata
        self.max_other = max_other
        self._alloc(2 * (max_pdata + PDU_HEADER) if max_pdata < (1 << 22) else max_pdata + PDU_HEADER)
        self._command = bytearray()
        self._cmd_ctx = -1
        self._ds_ctx = -1

    cdef _alloc(self, Py_ssize_t cap):
        cdef bytearray buf = bytearray(cap)
        if self._end > self._start:
            memcpy(<unsigned char*>buf, self._p + self._start, self._end - self._start)
        self._end -= self._start
        self._start = 0
        self._buf = buf
        self._p = <unsigned char*>buf
        self._cap = cap
        self._view = memoryview(buf)

    @property
    def dataset_in_progress(self):
        """Context ID of a dataset whose last fragment has not arrived, or None."""
        return None if self._ds_ctx < 0 else self._ds_ctx

    @property
    def buffered(self):
        return self._end - self._start

    def get_buffer(self, Py_ssize_t sizehint=-1):
        """Writable memoryview over the free tail of the buffer (compacting or
        growing first if the PDU being received would not fit)."""
        cdef Py_ssize_t pending = self._end - self._start
        cdef Py_ssize_t need = self._need if self._need > pending else pending
        if self._pdu_end:
            raise RuntimeError("get_buffer while a PDU is being walked")
        if pending == 0:
            self._start = self._end = 0
        if need + 4096 > self._cap:
            self._alloc(need + 4096 if need + 4096 > 2 * self._cap else 2 * self._cap)
        elif self._cap - self._end < 65536 or self._start + need > self._cap:
            memmove(self._p, self._p + self._start, pending)
            self._start = 0
            self._end = pending
        return self._view[self._end:]

    def buffer_updated(self, Py_ssize_t nbytes):
        if nbytes < 0 or self._end + nbytes > self._cap:
            raise ValueError("buffer_updated beyond the buffer")
        self._end += nbytes
        self.bytes_received += nbytes

    def sink_dataset(self, InstanceFile writer not None, hash_update, int context_id, Py_ssize_t limit):
        """Write the running data set's next fragments on ``context_id`` to
        ``writer`` here, and pass each to ``hash_update`` (unless None),
        without an event: the per-PDV path of a large data set then stays in
        C. Only fragments that are not the last and keep the data set within
        ``limit`` bytes are taken; the first other one (the last, one past
        the limit, one on another context, one the writer refuses: its
        error is met again where the event is handled) comes back from
        ``next_event`` as before and ends the sink, as do ``unsink`` and
        ``discard``."""
        self._sink = writer
        self._sink_hash = hash_update
        self._sink_ctx = context_id
        self._sink_limit = limit

    def unsink(self):
        """Stop the sink (``sink_dataset``): every fragment is an event again."""
        self._sink = None
        self._sink_hash = None

    def discard(self):
        """Drop everything buffered and any partial message (after an abort)."""
        self._sink = None
        self._sink_hash = None
        self._start = self._end = self._pdu_end = 0
        self._need = PDU_HEADER
        self._cmd_ctx = self._ds_ctx = -1
        self._command.clear()

    def feed(self, data):
        """Copy ``data`` in (tests and non-buffered callers). Call next_event()
        until None between feeds."""
        cdef const unsigned char[::1] src = data
        cdef Py_ssize_t done = 0, n, total = src.shape[0]
        while done < total:
            self.get_buffer()
            n = self._cap - self._end
            if n > total - done:
                n = total - done
            memcpy(self._p + self._end, &src[done], n)
            self.buffer_updated(n)
            done += n
            if done < total and self._cap - self._end == 0:
                raise RuntimeError("feed() needs next_event() drained between chunks")

    def next_event(self):
        """The next event, or None when more bytes are needed.

        (EV_PDU, pdu_type, pdu_bytes)              any PDU but P-DATA-TF, whole
        (EV_COMMAND, context_id, command_bytes)    a complete command set
        (EV_DATASET, context_id, memoryview, last) one dataset fragment
        """
        cdef Py_ssize_t pos, item_len, data_start, data_end, avail, length
        cdef unsigned char* p = self._p
        cdef int ctx, mch, ptype
        while True:
            if self._pdu_end:
                pos = self._pdv_pos
                if pos >= self._pdu_end:
                    self._start = self._pdu_end
                    self._pdu_end = 0
                    continue
                if self._pdu_end - pos < 6:
                    raise FramingError(ABORT_INVALID_PARAMETER, "PDV item header runs past the P-DATA-TF PDU")
                item_len = be32(p + pos)
                if item_len < 2 or item_len > self._pdu_end - pos - 4:
                    raise FramingError(ABORT_INVALID_PARAMETER, f"PDV item length {item_len} does not fit its PDU")
                ctx = p[pos + 4]
                mch = p[pos + 5]
                data_start = pos + 6
                data_end = pos + 4 + item_len
                self._pdv_pos = data_end
                if (ctx & 1) == 0:
                    raise FramingError(ABORT_INVALID_PARAMETER, f"PDV presentation context ID {ctx} is not odd")
                if mch & 0xFC:
                    raise FramingError(ABORT_INVALID_PARAMETER, f"PDV message control header {mch:#04x} has reserved bits set")
                if mch & 1:
                    if self._ds_ctx >= 0:
                        raise FramingError(ABORT_UNEXPECTED_PDU, "command fragment before the previous dataset ended")
                    if self._cmd_ctx >= 0 and ctx != self._cmd_ctx:
                        raise FramingError(ABORT_UNEXPECTED_PDU, "command fragments on two presentation contexts")
                    if len(self._command) + (data_end - data_start) > MAX_COMMAND:
                        raise FramingError(ABORT_INVALID_PARAMETER, "command set larger than 64 KiB")
                    self._command += self._view[data_start:data_end]
                    if mch & 2:
                        command = bytes(self._command)
                        self._command.clear()
                        self._cmd_ctx = -1
                        return (EV_COMMAND, ctx, command)
                    self._cmd_ctx = ctx
                    continue
                if self._cmd_ctx >= 0:
                    raise FramingError(ABORT_UNEXPECTED_PDU, "dataset fragment before the command set ended")
                if self._ds_ctx >= 0 and ctx != self._ds_ctx:
                    raise FramingError(ABORT_UNEXPECTED_PDU, "dataset fragments on two presentation contexts")
                self._ds_ctx = -1 if mch & 2 else ctx
                if self._sink is not None:
                    if ((mch & 2) == 0 and ctx == self._sink_ctx
                            and self._sink._offset - self._sink.prefix_size + (data_end - data_start) <= self._sink_limit
                            and self._sink.write_raw(p + data_start, data_end - data_start) == 0):
                        if self._sink_hash is not None:
                            self._sink_hash(self._view[data_start:data_end])
                        self.sunk += 1
                        continue
                    self._sink = None
                    self._sink_hash = None
                return (EV_DATASET, ctx, self._view[data_start:data_end], (mch & 2) != 0)

            avail = self._end - self._start
            if avail < PDU_HEADER:
                self._need = PDU_HEADER
                return None
            ptype = p[self._start]
            length = be32(p + self._start + 2)
            if ptype == 4:
                if length > self.max_pdata:
                    raise FramingError(ABORT_INVALID_PARAMETER,
                                       f"P-DATA-TF length {length} exceeds our maximum {self.max_pdata}")
                if length < 6:
                    raise FramingError(ABORT_INVALID_PARAMETER, "P-DATA-TF PDU without a PDV item")
            elif 1 <= ptype <= 7:
                if length > self.max_other:
                    raise FramingError(ABORT_INVALID_PARAMETER, f"PDU type {ptype:#04x} length {length} too large")
            else:
                raise FramingError(ABORT_UNRECOGNIZED_PDU, f"unrecognized PDU type {ptype:#04x}")
            if avail < PDU_HEADER + length:
                self._need = PDU_HEADER + length
                return None
            self._need = PDU_HEADER
            if ptype == 4:
                self._pdv_pos = self._start + PDU_HEADER
                self._pdu_end = self._pdv_pos + length
                continue
            pdu = PyBytes_FromStringAndSize(<char*>(p + self._start), PDU_HEADER + length)
            self._start += PDU_HEADER + length
            return (EV_PDU, ptype, pdu)


# The VR of each command set element (PS3.7 E.1-1): what decode_command makes
# of its value; an element not listed is kept as raw bytes.
cdef enum:
    _VR_UNKNOWN = 0
    _VR_US = 1
    _VR_UL = 2
    _VR_AT = 3
    _VR_TEXT = 4   # UI, AE, LO


cdef inline int _command_vr(unsigned int tag) noexcept nogil:
    if tag == 0x00000000:
        return _VR_UL
    if tag in (0x00000100, 0x00000110, 0x00000120, 0x00000700, 0x00000800, 0x00000900, 0x00000903,
               0x00001002, 0x00001008, 0x00001020, 0x00001021, 0x00001022, 0x00001023, 0x00001031):
        return _VR_US
    if tag in (0x00000002, 0x00000003, 0x00000600, 0x00000902, 0x00001000, 0x00001001, 0x00001030):
        return _VR_TEXT
    if tag == 0x00000901 or tag == 0x00001005:
        return _VR_AT
    return _VR_UNKNOWN


cdef inline bint _is_space(unsigned char c) noexcept nogil:
    # what str.lstrip() takes off the front of ASCII text
    return c == 32 or 9 <= c <= 13 or 28 <= c <= 31


def decode_command(data):
    """Decode a command set (implicit VR little endian) into {tag: value}.

    US/UL become int, UI/AE/LO str (trailing NUL and spaces, then leading
    whitespace, stripped; a byte past ASCII becomes U+FFFD), AT a tuple of
    tags; unknown elements stay bytes. Raises ValueError on a truncated or
    over-long element.
    """
    cdef const unsigned char[::1] b = data
    cdef Py_ssize_t n = b.shape[0], pos = 0, length, i, start, end
    cdef unsigned int tag
    cdef int vr
    cdef dict out = {}
    cdef const unsigned char* q
    while pos < n:
        if n - pos < 8:
            raise ValueError("truncated command element header")
        q = &b[pos]
        tag = (<unsigned int>q[1] << 24) | (<unsigned int>q[0] << 16) | (<unsigned int>q[3] << 8) | q[2]
        length = q[4] | (<Py_ssize_t>q[5] << 8) | (<Py_ssize_t>q[6] << 16) | (<Py_ssize_t>q[7] << 24)
        pos += 8
        if (tag >> 16) != 0:
            raise ValueError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) outside group 0000 in a command set")
        if length > n - pos:
            raise ValueError(f"command element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the command set")
        q = &b[pos]
        vr = _command_vr(tag)
        if vr == _VR_US:
            if length != 2:
                raise ValueError(f"US command element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has length {length}")
            out[tag] = q[0] | (q[1] << 8)
        elif vr == _VR_UL:
            if length != 4:
                raise ValueError("UL command element with length != 4")
            out[tag] = q[0] | (q[1] << 8) | (q[2] << 16) | (<unsigned int>q[3] << 24)
        elif vr == _VR_AT:
            tags = []
            i = 0
            while i + 4 <= length:
                tags.append((<unsigned int>q[i + 1] << 24) | (<unsigned int>q[i] << 16) | (<unsigned int>q[i + 3] << 8) | q[i + 2])
                i += 4
            out[tag] = tuple(tags)
        elif vr == _VR_TEXT:
            end = length
            while end > 0 and (q[end - 1] == 0 or q[end - 1] == 32):
                end -= 1
            start = 0
            while start < end and _is_space(q[start]):
                start += 1
            out[tag] = PyUnicode_DecodeASCII(<const char*>q + start, end - start, "replace")
        else:
            out[tag] = PyBytes_FromStringAndSize(<char*>q, length)
        pos += length
    return out
