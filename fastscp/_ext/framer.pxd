# Declarations of the PDU framer (framer.pyx), for other Cython modules to cimport.
cimport cython
from fastscp._ext.writer cimport InstanceFile


@cython.final
cdef class PDUFramer:
    cdef bytearray _buf
    cdef object _view
    cdef unsigned char* _p
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _start          # first unconsumed byte
    cdef Py_ssize_t _end            # one past the last received byte
    cdef Py_ssize_t _need           # bytes (from _start) the current PDU needs
    cdef Py_ssize_t _pdu_end        # end of the P-DATA PDU being walked, 0 if none
    cdef Py_ssize_t _pdv_pos        # next PDV item within that PDU
    cdef bytearray _command
    cdef int _cmd_ctx               # context of a command still being gathered, -1 if none
    cdef int _ds_ctx                # context of a dataset still arriving, -1 if none
    cdef readonly Py_ssize_t max_pdata   # largest P-DATA-TF length we accept (what we advertised)
    cdef readonly Py_ssize_t max_other   # largest other PDU
    cdef readonly unsigned long long bytes_received
    cdef InstanceFile _sink         # takes the running data set's fragments without events (None: off)
    cdef object _sink_hash          # called with each fragment the sink took (None: nothing)
    cdef int _sink_ctx
    cdef Py_ssize_t _sink_limit     # ... while the data set stays within this many bytes
    cdef readonly unsigned long long sunk   # fragments the sink took

    cdef _alloc(self, Py_ssize_t cap)
