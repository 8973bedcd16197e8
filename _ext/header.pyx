# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Header scanner: find the raw values of a few top-level data elements.

Implements the data set encoding of DICOM PS3.5 section 7 for the three
uncompressed transfer syntaxes (Implicit VR Little Endian, Explicit VR Little
Endian, Explicit VR Big Endian; PS3.5 A.1-A.3):

- 7.1.2 / 7.1.3: an element is tag, (VR,) length, value. With explicit VR,
  OB OD OF OL OV OW SQ SV UC UN UR UT UV have two reserved bytes and a 32-bit
  length, every other VR a 16-bit length.
- 7.5: a sequence of undefined length (0xFFFFFFFF) is a run of items
  (FFFE,E000) closed by a Sequence Delimitation Item (FFFE,E0DD); an item of
  undefined length is a data set closed by an Item Delimitation Item
  (FFFE,E00D). Items and delimiters are always tag + 32-bit length.
- 6.2.2: an undefined-length UN is a sequence whose items are implicit VR LE.
- A.4: encapsulated pixel data (OB/OW of undefined length) is the same item
  structure (fragments of defined length) and is skipped the same way.

Only the top level is of interest: defined-length values are jumped over,
undefined-length ones are walked with an explicit stack (no recursion, depth
capped) to find their delimiter. The walk stops at the first top-level tag past
the last requested one, at top-level pixel data, or at the end of the buffer,
so a head of the dataset is enough in the common case and the caller learns
from the status whether it was.

Leniency follows what real files need (and what pydicom accepts): the first
element of the data set, and of each item inside an explicit VR data set,
decides explicit vs implicit VR; an explicit VR element whose VR bytes are not
two capital letters is read as implicit VR. Everything else that does not fit
is a ValueError; the scanner never reads outside the buffer, and every step
moves forward at least 8 bytes, so it always ends.

This is the one element walker of the package. The element cursor (the
decoding of one element header, ``_read_header``, and its helpers) is
declared inline in fastscp/_ext/header.pxd for other Cython modules; the
scanner, ``walk_to_end`` (the rest of a received data set after its head,
for the end-of-data-set check) and the file meta walk (a HeaderScanner with
``group=0x0002``) all use it.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8, PyUnicode_Decode, PyUnicode_DecodeLatin1
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memchr, memcpy

IMPLICIT_VR_LE = 0
EXPLICIT_VR_LE = 1
EXPLICIT_VR_BE = 2

# Scan outcomes: did the scan see enough to settle every requested tag?
TRUNCATED = 0    # the buffer ended inside a top-level element: not enough
END = 1          # the buffer ended exactly after a top-level element
PAST_LAST = 2    # reached a top-level tag >= the last requested one: settled
PIXEL_DATA = 3   # reached top-level (7FE0,0008/0009/0010): settled

cdef enum:
    _TRUNCATED = 0
    _END = 1
    _PAST_LAST = 2
    _PIXEL_DATA = 3
    _SEQUENCE = 1      # stack level: expecting items or a sequence delimiter
    _ITEM = 2          # stack level: data set of an undefined-length item
    MAX_DEPTH = 512    # stack levels (a sequence and its item are two)

cdef uint32_t UNDEFINED = 0xFFFFFFFF
cdef uint32_t ITEM_TAG = 0xFFFEE000
cdef uint32_t ITEM_DELIMITER = 0xFFFEE00D
cdef uint32_t SEQUENCE_DELIMITER = 0xFFFEE0DD
cdef uint32_t FLOAT_PIXEL_DATA = 0x7FE00008
cdef uint32_t PIXEL_DATA_TAG = 0x7FE00010


# The same set for Python callers, derived from the C test above (one definition).
LONG_LENGTH_VRS = frozenset(bytes((a, b)) for a in range(0x41, 0x5B) for b in range(0x41, 0x5B)
                            if _has_long_length(a, b))


cdef inline bint _item_is_implicit(const uint8_t* buf, Py_ssize_t pos, Py_ssize_t end,
                                   bint enclosing_implicit) noexcept nogil:
    # Items of an implicit VR data set stay implicit; inside explicit VR the
    # first element decides (UN contents per 6.2.2, and writers that switch).
    if enclosing_implicit or end - pos < 6:
        return enclosing_implicit
    return not _is_vr(buf + pos + 4)


cdef class HeaderScanner:
    """Scanner for a fixed, sorted set of top-level tags (all below (7FE0,0008)).

    Build it once; ``scan`` is then called per dataset head. With ``group``
    (e.g. 2, the file meta), the walk covers that group only: it stops, with
    PAST_LAST, at the first top-level tag of another group, and the tags
    must lie in the group.
    """

    # attributes: header.pxd

    def __cinit__(self, tags, group=None):
        self._tags = NULL
        self._ntags = 0

    def __init__(self, tags, group=None):
        cdef Py_ssize_t i
        cdef tuple tup = tuple(tags)
        for i in range(len(tup)):
            t = tup[i]
            if not isinstance(t, int) or not 0 <= t < FLOAT_PIXEL_DATA:
                raise ValueError(f"tag {t!r} is not an int below (7FE0,0008)")
            if (<uint32_t>t >> 16) == 0xFFFE:
                raise ValueError(f"tag {t:#010x} is an item or delimiter tag")
            if i and tup[i - 1] >= t:
                raise ValueError("tags must be sorted ascending without duplicates")
            if group is not None and (<uint32_t>t >> 16) != group:
                raise ValueError(f"tag {t:#010x} is not in group {group:#06x}")
        if group is not None and not 0 <= group < 0x7FE0:
            raise ValueError(f"group {group!r} is not an int below 0x7FE0")
        self.tags = tup
        if self._tags != NULL:
            PyMem_Free(self._tags)
        self._tags = <uint32_t*>PyMem_Malloc(max(len(tup), 1) * sizeof(uint32_t))
        if self._tags == NULL:
            raise MemoryError()
        for i in range(len(tup)):
            self._tags[i] = <uint32_t>tup[i]
        self._ntags = len(tup)
        # No tags: walk to pixel data or the end (used to find the header span).
        self._last = self._tags[self._ntags - 1] if self._ntags else UNDEFINED
        self._first = 0
        if group is not None:
            self._first = <uint32_t>group << 16
            self._last = self._first | 0xFFFF

    def __dealloc__(self):
        if self._tags != NULL:
            PyMem_Free(self._tags)

    cdef Py_ssize_t _index(self, uint32_t tag) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self._ntags - 1, mid
        while lo <= hi:
            mid = (lo + hi) >> 1
            if self._tags[mid] == tag:
                return mid
            if self._tags[mid] < tag:
                lo = mid + 1
            else:
                hi = mid - 1
        return -1

    def scan(self, buffer, int syntax=EXPLICIT_VR_LE):
        """Scan a dataset head (bytes-like, C-contiguous).

        Returns ``(values, status, offset)``: ``values`` is a tuple aligned with
        ``tags`` holding each found value's raw bytes (None if not seen);
        ``status`` is TRUNCATED, END, PAST_LAST or PIXEL_DATA; ``offset`` is
        where the scan stopped: the start of the element it stopped at (or
        that the buffer cut), or the end of the last element read.
        Raises ValueError if the bytes are not a valid data set encoding.
        """
        cdef Py_buffer view
        cdef Py_ssize_t* spans
        cdef Py_ssize_t i, offset = 0
        cdef int status
        cdef list values
        if syntax != IMPLICIT_VR_LE and syntax != EXPLICIT_VR_LE and syntax != EXPLICIT_VR_BE:
            raise ValueError(f"unknown syntax {syntax}")
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        spans = <Py_ssize_t*>PyMem_Malloc(2 * max(self._ntags, 1) * sizeof(Py_ssize_t))
        if spans == NULL:
            PyBuffer_Release(&view)
            raise MemoryError()
        try:
            for i in range(self._ntags):
                spans[2 * i] = -1
            status = self._scan(<const uint8_t*>view.buf, view.len,
                                syntax != EXPLICIT_VR_BE, syntax == IMPLICIT_VR_LE,
                                spans, &offset)
            values = [None] * self._ntags
            for i in range(self._ntags):
                if spans[2 * i] >= 0:
                    values[i] = PyBytes_FromStringAndSize(
                        <const char*>view.buf + spans[2 * i], spans[2 * i + 1])
        finally:
            PyMem_Free(spans)
            PyBuffer_Release(&view)
        return tuple(values), status, offset

    cdef int _scan(self, const uint8_t* buf, Py_ssize_t end, bint little, bint implicit,
                   Py_ssize_t* spans, Py_ssize_t* offset) except -1:
        cdef uint8_t kind[MAX_DEPTH]
        cdef uint8_t level_implicit[MAX_DEPTH]
        cdef int depth = 0
        cdef Py_ssize_t pos = 0, value_start = 0, idx
        cdef uint32_t tag, length, top_tag = 0
        cdef _Header h

        # The first element decides explicit vs implicit VR (both ways), as
        # real files sometimes disagree with their transfer syntax.
        if end >= 6:
            implicit = not _is_vr(buf + 4)
        level_implicit[0] = implicit
        kind[0] = 0

        while True:
            if depth == 0:
                offset[0] = pos
                if pos == end:
                    return _END
                if end - pos < 4:
                    return _TRUNCATED
                tag = _tag(buf + pos, little)
                if tag == PIXEL_DATA_TAG or tag == FLOAT_PIXEL_DATA or tag == FLOAT_PIXEL_DATA + 1:
                    return _PIXEL_DATA
                if (tag >> 16) == 0xFFFE and self._first == 0:
                    raise ValueError(f"item or delimiter tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) at top level, offset {pos}")
                if tag > self._last or tag < self._first:
                    return _PAST_LAST
                if not _read_header(buf, pos, end, little, level_implicit[0], &h):
                    return _TRUNCATED
                value_start = pos + h.size
                if h.length == UNDEFINED:
                    if not h.implicit and not _may_be_undefined(h.vr0, h.vr1):
                        raise ValueError(f"undefined length on VR {chr(h.vr0)}{chr(h.vr1)} at offset {pos}")
                    top_tag = tag
                    depth = 1
                    kind[1] = _SEQUENCE
                    level_implicit[1] = level_implicit[0]
                    pos = value_start
                    continue
                if h.length > end - value_start:
                    return _TRUNCATED
                idx = self._index(tag)
                if idx >= 0:
                    spans[2 * idx] = value_start
                    spans[2 * idx + 1] = h.length
                pos = value_start + h.length
                if tag == self._last:
                    offset[0] = pos
                    return _PAST_LAST
                continue

            if end - pos < 8:
                return _TRUNCATED

            if kind[depth] == _SEQUENCE:
                tag = _tag(buf + pos, little)
                length = _u32(buf + pos + 4, little)
                pos += 8
                if tag == ITEM_TAG:
                    if length == UNDEFINED:
                        if depth + 1 >= MAX_DEPTH:
                            raise ValueError(f"sequences nested deeper than {MAX_DEPTH // 2}")
                        depth += 1
                        kind[depth] = _ITEM
                        level_implicit[depth] = _item_is_implicit(buf, pos, end, level_implicit[depth - 1])
                    elif length > end - pos:
                        return _TRUNCATED
                    else:
                        pos += length
                elif tag == SEQUENCE_DELIMITER:
                    depth -= 1
                    if depth == 0:
                        idx = self._index(top_tag)
                        if idx >= 0:
                            spans[2 * idx] = value_start
                            spans[2 * idx + 1] = pos - 8 - value_start
                        if top_tag == self._last:
                            offset[0] = pos
                            return _PAST_LAST
                else:
                    raise ValueError(f"expected an item or sequence delimiter at offset {pos - 8}, "
                                     f"found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
                continue

            # kind[depth] == _ITEM: one element of an undefined-length item
            tag = _tag(buf + pos, little)
            if tag == ITEM_DELIMITER:
                pos += 8
                depth -= 1
                continue
            if (tag >> 16) == 0xFFFE:
                raise ValueError(f"unexpected ({tag >> 16:04X},{tag & 0xFFFF:04X}) inside an item at offset {pos}")
            if not _read_header(buf, pos, end, little, level_implicit[depth], &h):
                return _TRUNCATED
            pos += h.size
            if h.length == UNDEFINED:
                if not h.implicit and not _may_be_undefined(h.vr0, h.vr1):
                    raise ValueError(f"undefined length on VR {chr(h.vr0)}{chr(h.vr1)} at offset {pos - h.size}")
                if depth + 1 >= MAX_DEPTH:
                    raise ValueError(f"sequences nested deeper than {MAX_DEPTH // 2}")
                depth += 1
                kind[depth] = _SEQUENCE
                level_implicit[depth] = level_implicit[depth - 1]
            elif h.length > end - pos:
                return _TRUNCATED
            else:
                pos += h.length


# ---- the end of a data set ------------------------------------------------


cdef const uint8_t* _bytes_at(const uint8_t* head, Py_ssize_t head_len, Py_ssize_t pos, Py_ssize_t n,
                              read_at, uint8_t* out) except NULL:
    """n bytes at pos: in the head if it holds them, else copied from read_at(pos, n)."""
    cdef bytes data
    if pos + n <= head_len:
        return head + pos
    data = read_at(pos, n)
    if len(data) < n:
        raise ValueError(f"data set ends inside an element header at offset {pos}")
    memcpy(out, <const char*>data, n)
    return out


def walk_to_end(head, Py_ssize_t pos, Py_ssize_t size, int syntax, read_at):
    """Walk top-level elements from ``pos`` (the start of one) to ``size``,
    the data set's length; raise ValueError unless the last one ends exactly
    there.

    For the part of a received data set after the scanned head (usually
    just pixel data): defined lengths are jumped over; encapsulated pixel
    data ((7FE0,0008/0009/0010) of undefined length, PS3.5 A.4) is walked
    item by item to its sequence delimiter; another undefined-length element
    ends the walk (accepted, not followed). Element headers come from
    ``head`` (bytes-like, the data set's first bytes) when it holds them,
    else from ``read_at(offset, n)``.
    """
    cdef Py_buffer view
    cdef uint8_t tmp[12]
    cdef const uint8_t* p
    cdef Py_ssize_t n
    cdef bint little = syntax != EXPLICIT_VR_BE, implicit = syntax == IMPLICIT_VR_LE
    cdef uint32_t tag, length
    cdef _Header h
    if syntax != IMPLICIT_VR_LE and syntax != EXPLICIT_VR_LE and syntax != EXPLICIT_VR_BE:
        raise ValueError(f"unknown syntax {syntax}")
    PyObject_GetBuffer(head, &view, PyBUF_SIMPLE)
    try:
        while pos < size:
            if size - pos < 8:
                raise ValueError(f"data set ends inside an element header at offset {pos}")
            n = 12 if size - pos >= 12 else 8
            p = _bytes_at(<const uint8_t*>view.buf, view.len, pos, n, read_at, tmp)
            if not _read_header(p, 0, n, little, implicit, &h):
                raise ValueError(f"data set ends inside an element header at offset {pos}")
            pos += h.size
            if h.length != UNDEFINED:
                pos += h.length
                continue
            if h.tag != PIXEL_DATA_TAG and h.tag != FLOAT_PIXEL_DATA and h.tag != FLOAT_PIXEL_DATA + 1:
                return  # an undefined-length sequence after pixel data: not followed
            while True:  # encapsulated fragments up to the sequence delimiter
                if size - pos < 8:
                    raise ValueError(f"encapsulated pixel data ends inside an item at offset {pos}")
                p = _bytes_at(<const uint8_t*>view.buf, view.len, pos, 8, read_at, tmp)
                tag = _tag(p, little)
                length = _u32(p + 4, little)
                pos += 8
                if tag == SEQUENCE_DELIMITER:
                    break
                if tag != ITEM_TAG or length == UNDEFINED:
                    raise ValueError(f"bad item in encapsulated pixel data at offset {pos - 8}")
                pos += length
        if pos != size:
            raise ValueError(f"the last element runs {pos - size} bytes past the end of the data set")
    finally:
        PyBuffer_Release(&view)


# ---- value decoding, the common cases -------------------------------------
# Kinds as in storage/header.py: UID, CODE, TEXT, NAME, INT, INTS, US.
DEF K_CODE = 1
DEF K_TEXT = 2
DEF K_NAME = 3
DEF K_INT = 4
DEF K_INTS = 5


cdef inline Py_ssize_t _trimmed(const char* p, Py_ssize_t* end) noexcept:
    """The start of ``p[:end[0]]`` without leading and trailing spaces and
    NULs; ``end[0]`` is moved back past the trailing ones."""
    cdef Py_ssize_t start = 0
    while start < end[0] and (p[start] == 32 or p[start] == 0):
        start += 1
    while end[0] > start and (p[end[0] - 1] == 32 or p[end[0] - 1] == 0):
        end[0] -= 1
    return start


cdef inline object _decode_stripped(bytes raw, const char* encoding, bint latin):
    """``raw`` without leading and trailing spaces and NULs, decoded: the same
    as decoding it and stripping " \\0", for every codec the character sets
    map to (a space or NUL byte is always that one character there)."""
    cdef const char* p = PyBytes_AS_STRING(raw)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t start = _trimmed(p, &end)
    if latin:
        return PyUnicode_DecodeLatin1(p + start, end - start, NULL)
    return PyUnicode_Decode(p + start, end - start, encoding, NULL)


cdef inline object _plain_int(bytes raw):
    """An IS value that is one plain integer (spaces or NULs around it, an
    optional sign, at most 18 digits) as int; None for anything else, which
    the Python decoder then reads (the same result where both apply)."""
    cdef const char* p = PyBytes_AS_STRING(raw)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t start = _trimmed(p, &end)
    cdef long long value = 0
    cdef bint negative = False
    if start < end and (p[start] == 43 or p[start] == 45):  # + -
        negative = p[start] == 45
        start += 1
    if start == end or end - start > 18:
        return None
    while start < end:
        if not 48 <= p[start] <= 57:
            return None
        value = value * 10 + (p[start] - 48)
        start += 1
    return -value if negative else value


cdef inline bint _has(bytes raw, int byte) noexcept:
    return memchr(PyBytes_AS_STRING(raw), byte, PyBytes_GET_SIZE(raw)) != NULL


# Entries a shared-value cache (``decode_values_into``'s ``codes`` and
# ``texts``) holds before it is emptied: a peer sending ever new values
# cannot make it grow without bound.
SHARED_MAX = 4096


cdef inline object _shared_or(dict shared, bytes raw, object text):
    """Keep ``text``, decoded from ``raw``, in ``shared`` for the next
    instances that repeat ``raw``; returns ``text``."""
    if len(shared) >= SHARED_MAX:
        shared.clear()
    shared[raw] = text
    return text


def decode_values_into(dict fields, tuple values, tuple names, tuple kinds, str encoding, list encodings,
                       bint little, decode_code, decode_text, decode_name, decode_int,
                       dict codes, dict texts, Py_ssize_t unique):
    """Decode ``values[1:]`` (scanner output, bytes or None) into ``fields``
    by name. The common cases run here: one value, no code extensions, the
    data set's first character set decodes it. Anything else goes to the
    given Python decoders (storage/header.py), so results are the same.

    A single value is looked up by its raw bytes first, in ``codes`` (code
    strings, UIDs, dates: decoded as latin-1 whatever the character set) or
    ``texts`` (text and names: the caller passes the dict of ``encoding``):
    the instances of a series repeat their patient's, study's and series'
    values, so they share one string each instead of a copy per instance
    (the index writer's queue holds up to a batch of them). The value at
    ``unique`` (the SOP Instance UID; -1: none) differs per instance and is
    not kept."""
    cdef Py_ssize_t i, n = len(names)
    cdef int kind
    cdef bytes raw
    cdef const char* codec = PyUnicode_AsUTF8(encoding)
    # the codecs of ISO_IR 6 / ISO_IR 100 (and no character set): decoded
    # without a codec lookup per value ("iso8859" is Python's alias of latin-1)
    cdef bint latin = encoding in ("iso8859", "latin_1", "latin-1", "iso8859-1")
    for i in range(n):
        obj = values[i + 1]
        if obj is None:
            continue
        raw = <bytes>obj
        kind = kinds[i]
        name = names[i]
        if kind <= K_CODE or kind == K_INTS:
            if _has(raw, 92):  # a backslash: several values
                fields[name] = decode_code(raw)
            elif i == unique:
                fields[name] = _decode_stripped(raw, NULL, True)
            else:
                text = codes.get(raw)
                fields[name] = text if text is not None else _shared_or(codes, raw, _decode_stripped(raw, NULL, True))
        elif kind == K_TEXT or kind == K_NAME:
            if _has(raw, 27) or _has(raw, 92) or (kind == K_NAME and _has(raw, 61)):  # ESC, "\\", "="
                fields[name] = decode_text(raw, encodings) if kind == K_TEXT else decode_name(raw, encodings)
                continue
            text = texts.get(raw)
            if text is not None:
                fields[name] = text
                continue
            try:
                fields[name] = _shared_or(texts, raw, _decode_stripped(raw, codec, latin))
            except (UnicodeDecodeError, LookupError):
                fields[name] = decode_text(raw, encodings) if kind == K_TEXT else decode_name(raw, encodings)
        elif kind == K_INT:
            number = _plain_int(raw)
            fields[name] = decode_int(raw) if number is None else number
        else:  # US
            if len(raw) >= 2:
                fields[name] = (raw[0] | (raw[1] << 8)) if little else ((raw[0] << 8) | raw[1])
            else:
                fields[name] = None
