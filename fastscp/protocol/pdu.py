"""Association PDUs: decode A-ASSOCIATE-RQ, A-ABORT; encode AC, RJ, RELEASE, ABORT, P-DATA-TF.

PS3.8 section 9.3 (PDU structure) and Annex D (user information sub-items:
D.3.3.1 maximum length, D.3.3.2 implementation identification, D.3.3.3
asynchronous operations window, D.3.3.4 SCP/SCU role selection, D.3.3.5
SOP class extended negotiation). P-DATA-TF
PDUs are never decoded here: the Cython framer walks them in place.

Decoding raises ``PDUError`` with the A-ABORT reason code to send.
"""

from __future__ import annotations

import dataclasses
import struct

# re-exported (the ``X as X`` form): association.py names the abort reasons through this module
from .._ext.framer import ABORT_INVALID_PARAMETER as ABORT_INVALID_PARAMETER
from .._ext.framer import ABORT_UNEXPECTED_PDU as ABORT_UNEXPECTED_PDU
from .._ext.framer import FramingError as FramingError

# PDU types (PS3.8 9.3.1)
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"

# Presentation context results (PS3.8 9.3.3.2)
RESULT_ACCEPTANCE = 0
RESULT_USER_REJECTION = 1
RESULT_NO_REASON = 2
RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ASSOCIATE-RJ result / source / reason (PS3.8 9.3.4)
RJ_PERMANENT = 1
RJ_TRANSIENT = 2
RJ_SOURCE_USER = 1
RJ_SOURCE_ACSE = 2
RJ_SOURCE_PRESENTATION = 3
RJ_USER_NO_REASON = 1
RJ_USER_APP_CONTEXT_NOT_SUPPORTED = 2
RJ_USER_CALLING_AE_NOT_RECOGNIZED = 3
RJ_USER_CALLED_AE_NOT_RECOGNIZED = 7
RJ_ACSE_PROTOCOL_VERSION = 2
RJ_PRESENTATION_CONGESTION = 1
RJ_PRESENTATION_LOCAL_LIMIT = 2

# A-ABORT source (PS3.8 9.3.8)
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2


class PDUError(FramingError):
    """A PDU the peer sent is malformed; ``reason`` is the A-P-ABORT reason.
    A FramingError (``association.RemoteProtocolError``): every error a
    peer's bytes cause is one type."""

    def __init__(self, message: str, reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(reason, message)


@dataclasses.dataclass(frozen=True, slots=True)
class PresentationContextProposal:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RoleSelection:
    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ExtendedNegotiation:
    """SOP Class Extended Negotiation sub-item (PS3.7 D.3.3.5): the Service
    Class Application Information of one SOP class, bytes whose meaning the
    service class defines (PS3.4 C.5.1 for Query/Retrieve: byte 1 is
    relational-queries). In a request it is what the requestor proposes, in
    the answer what the acceptor agrees to."""

    sop_class_uid: str
    info: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class AssociateRequest:
    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: tuple[PresentationContextProposal, ...]
    max_pdu: int  # the peer's receive maximum; 0 means unlimited
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    async_ops: tuple[int, int] | None = None  # (max invoked, max performed)
    roles: tuple[RoleSelection, ...] = ()
    user_identity: bytes | None = None
    extended: tuple[ExtendedNegotiation, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class PresentationContextResult:
    context_id: int
    result: int
    transfer_syntax: str  # the accepted one; ignored unless result is acceptance
    abstract_syntax: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class AssociateAccept:
    results: tuple[PresentationContextResult, ...]
    max_pdu: int
    implementation_class_uid: str
    implementation_version_name: str
    roles: tuple[RoleSelection, ...] = ()
    async_ops: tuple[int, int] | None = None
    extended: tuple[ExtendedNegotiation, ...] = ()


def _uid(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def _items(data: bytes, start: int, end: int, what: str) -> list[tuple[int, int, int]]:
    """(type, value_start, value_end) of each item in data[start:end]; items
    have a 1-byte type, 1 reserved byte and a 2-byte big-endian length."""
    out = []
    pos = start
    while pos < end:
        if end - pos < 4:
            raise PDUError(f"truncated item header in {what}")
        item_type = data[pos]
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if pos + 4 + length > end:
            raise PDUError(f"item {item_type:#04x} in {what} runs past its parent")
        out.append((item_type, pos + 4, pos + 4 + length))
        pos += 4 + length
    return out


def decode_associate_rq(pdu: bytes) -> AssociateRequest:
    """Decode a whole A-ASSOCIATE-RQ PDU (header included, PS3.8 9.3.2):
    its fixed fields, then its items: one Application Context (0x10), the
    Presentation Contexts (0x20, ``_presentation_context``) and one User
    Information item (0x50, ``_user_information``). Raises PDUError for
    anything PS3.8 does not allow there."""
    if len(pdu) < 74 or pdu[0] != A_ASSOCIATE_RQ:
        raise PDUError("A-ASSOCIATE-RQ shorter than its fixed fields")
    app_context = ""
    contexts: list[PresentationContextProposal] = []
    user: _UserInformation | None = None
    for item_type, start, end in _items(pdu, 74, len(pdu), "A-ASSOCIATE-RQ"):
        if item_type == 0x10:
            app_context = _uid(pdu[start:end])
        elif item_type == 0x20:
            contexts.append(_presentation_context(pdu, start, end, contexts))
        elif item_type == 0x50:
            user = _user_information(pdu, start, end)
        else:
            raise PDUError(f"unexpected item {item_type:#04x} in A-ASSOCIATE-RQ")
    if not app_context:
        raise PDUError("A-ASSOCIATE-RQ without an application context item")
    if not contexts:
        raise PDUError("A-ASSOCIATE-RQ without a presentation context")
    if user is None:  # PS3.8 9.3.2: one User Information item, always
        raise PDUError("A-ASSOCIATE-RQ without a user information item")
    return AssociateRequest(
        protocol_version=struct.unpack_from(">H", pdu, 6)[0],
        called_ae=pdu[10:26].decode("ascii", "replace").strip(" \x00"),
        calling_ae=pdu[26:42].decode("ascii", "replace").strip(" \x00"),
        application_context=app_context,
        contexts=tuple(contexts),
        max_pdu=user.max_pdu,
        implementation_class_uid=user.implementation_class_uid,
        implementation_version_name=user.implementation_version_name,
        async_ops=user.async_ops,
        roles=tuple(user.roles),
        user_identity=user.user_identity,
        extended=tuple(user.extended),
    )


def decode_associate_ac(pdu: bytes) -> AssociateAccept:
    """Decode a whole A-ASSOCIATE-AC PDU (header included, PS3.8 9.3.3), as
    a requestor reads the answer to its A-ASSOCIATE-RQ: one result per
    Presentation Context item (0x21, PS3.8 9.3.3.2: ID, result, and the
    accepted transfer syntax in a 0x40 sub-item, "not significant" unless
    the result is acceptance) and the User Information item (0x50, the
    same sub-item readers as the request's). Other items (the Application
    Context) are not checked. Raises PDUError for a structure PS3.8 does not
    allow (an item running past its parent, a Maximum Length that is not 4
    bytes)."""
    if len(pdu) < 74 or pdu[0] != A_ASSOCIATE_AC:
        raise PDUError("A-ASSOCIATE-AC shorter than its fixed fields")
    results: list[PresentationContextResult] = []
    user = _UserInformation()
    for item_type, start, end in _items(pdu, 74, len(pdu), "A-ASSOCIATE-AC"):
        if item_type == 0x21:
            if end - start < 4:
                raise PDUError("presentation context result item too short")
            ts = ""
            for sub_type, s, e in _items(pdu, start + 4, end, "presentation context result"):
                if sub_type == 0x40:
                    ts = _uid(pdu[s:e])
            results.append(PresentationContextResult(pdu[start], pdu[start + 2], ts))
        elif item_type == 0x50:
            user = _user_information(pdu, start, end)
    return AssociateAccept(
        results=tuple(results),
        max_pdu=user.max_pdu,
        implementation_class_uid=user.implementation_class_uid,
        implementation_version_name=user.implementation_version_name,
        roles=tuple(user.roles),
        async_ops=user.async_ops,
        extended=tuple(user.extended),
    )


def _presentation_context(pdu: bytes, start: int, end: int,
                          before: list[PresentationContextProposal]) -> PresentationContextProposal:
    """A Presentation Context item (PS3.8 9.3.2.2): an odd ID not used
    before, one Abstract Syntax sub-item (0x30), Transfer Syntax sub-items
    (0x40)."""
    if end - start < 4:
        raise PDUError("presentation context item too short")
    context_id = pdu[start]
    if context_id % 2 == 0 or any(c.context_id == context_id for c in before):
        raise PDUError(f"presentation context ID {context_id} is even or repeated")
    abstract = ""
    transfers: list[str] = []
    for sub_type, s, e in _items(pdu, start + 4, end, "presentation context"):
        if sub_type == 0x30:
            abstract = _uid(pdu[s:e])
        elif sub_type == 0x40:
            transfers.append(_uid(pdu[s:e]))
        else:
            raise PDUError(f"unexpected sub-item {sub_type:#04x} in a presentation context")
    return PresentationContextProposal(context_id, abstract, tuple(transfers))


@dataclasses.dataclass(slots=True)
class _UserInformation:
    """What a User Information item's sub-items said (PS3.7 D.3.3, PS3.8 D.1)."""

    max_pdu: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    async_ops: tuple[int, int] | None = None
    roles: list[RoleSelection] = dataclasses.field(default_factory=list)
    extended: list[ExtendedNegotiation] = dataclasses.field(default_factory=list)
    user_identity: bytes | None = None


def _user_information(pdu: bytes, start: int, end: int) -> _UserInformation:
    """The sub-items of a User Information item, each by its reader in
    ``_USER_SUB_ITEMS``; one without a reader (0x57, SOP Class Common
    Extended Negotiation, PS3.7 D.3.3.6: optional, answered with nothing)
    is skipped."""
    user = _UserInformation()
    for sub_type, s, e in _items(pdu, start, end, "user information"):
        read = _USER_SUB_ITEMS.get(sub_type)
        if read is not None:
            read(user, pdu, s, e)
    return user


def _max_length(user: _UserInformation, pdu: bytes, s: int, e: int) -> None:
    """Maximum Length (PS3.8 D.1)."""
    if e - s != 4:
        raise PDUError("maximum length sub-item is not 4 bytes")
    user.max_pdu = struct.unpack_from(">I", pdu, s)[0]


def _implementation_class(user: _UserInformation, pdu: bytes, s: int, e: int) -> None:
    """Implementation Class UID (PS3.7 D.3.3.2)."""
    user.implementation_class_uid = _uid(pdu[s:e])


def _implementation_version(user: _UserInformation, pdu: bytes, s: int, e: int) -> None:
    """Implementation Version Name (PS3.7 D.3.3.2)."""
    user.implementation_version_name = pdu[s:e].decode("ascii", "replace").strip()


def _async_window(user: _UserInformation, pdu: bytes, s: int, e: int) -> None:
    """Asynchronous Operations Window (PS3.7 D.3.3.3)."""
    if e - s != 4:
        raise PDUError("asynchronous operations window sub-item is not 4 bytes")
    invoked, performed = struct.unpack_from(">HH", pdu, s)
    user.async_ops = (invoked, performed)


def _role_selection(user: _UserInformation, pdu: bytes, s: int, e: int) -> None:
    """SCP/SCU Role Selection (PS3.7 D.3.3.4)."""
    if e - s < 4:
        raise PDUError("role selection sub-item too short")
    (uid_len,) = struct.unpack_from(">H", pdu, s)
    if s + 2 + uid_len + 2 != e:
        raise PDUError("role selection sub-item length mismatch")
    user.roles.append(RoleSelection(_uid(pdu[s + 2 : s + 2 + uid_len]), bool(pdu[e - 2]), bool(pdu[e - 1])))


def _sop_class_extended(user: _UserInformation, pdu: bytes, s: int, e: int) -> None:
    """SOP Class Extended Negotiation (PS3.7 D.3.3.5)."""
    if e - s < 2:
        raise PDUError("SOP class extended negotiation sub-item too short")
    (uid_len,) = struct.unpack_from(">H", pdu, s)
    if s + 2 + uid_len > e:
        raise PDUError("SOP class extended negotiation sub-item length mismatch")
    user.extended.append(ExtendedNegotiation(_uid(pdu[s + 2 : s + 2 + uid_len]), bytes(pdu[s + 2 + uid_len : e])))


def _user_identity(user: _UserInformation, pdu: bytes, s: int, e: int) -> None:
    """User Identity Negotiation (PS3.7 D.3.3.7), kept as received."""
    user.user_identity = pdu[s:e]


_USER_SUB_ITEMS = {
    0x51: _max_length, 0x52: _implementation_class, 0x53: _async_window, 0x54: _role_selection,
    0x55: _implementation_version, 0x56: _sop_class_extended, 0x58: _user_identity,
}


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16)


def encode_associate_ac(request: AssociateRequest, accept: AssociateAccept) -> bytes:
    """A-ASSOCIATE-AC answering ``request`` (PS3.8 9.3.3). Called/calling AE
    fields echo the request, as the standard asks."""
    body = [struct.pack(">HH", 1, 0), _ae(request.called_ae), _ae(request.calling_ae), bytes(32)]
    body.append(_item(0x10, APPLICATION_CONTEXT.encode()))
    for r in accept.results:
        # PS3.8 9.3.3.2: the item always holds one transfer syntax sub-item; for
        # a rejected context its value is not significant, so we send the
        # always-supported implicit VR little endian rather than nothing.
        ts = (r.transfer_syntax if r.result == RESULT_ACCEPTANCE and r.transfer_syntax else IMPLICIT_VR_LE).encode()
        body.append(_item(0x21, bytes((r.context_id, 0, r.result, 0)) + _item(0x40, ts)))
    user = [_item(0x51, struct.pack(">I", accept.max_pdu)), _item(0x52, accept.implementation_class_uid.encode())]
    if accept.async_ops is not None:
        user.append(_item(0x53, struct.pack(">HH", *accept.async_ops)))
    for role in accept.roles:
        uid = role.sop_class_uid.encode()
        user.append(_item(0x54, struct.pack(">H", len(uid)) + uid + bytes((role.scu_role, role.scp_role))))
    user.append(_item(0x55, accept.implementation_version_name.encode()))
    for ext in accept.extended:  # PS3.7 D.3.3.5: only for the SOP classes whose proposal we agree to
        uid = ext.sop_class_uid.encode()
        user.append(_item(0x56, struct.pack(">H", len(uid)) + uid + ext.info))
    body.append(_item(0x50, b"".join(user)))
    return _pdu(A_ASSOCIATE_AC, b"".join(body))


def encode_associate_rq(calling_ae: str, called_ae: str, pairs: list[tuple[str, str]], max_pdu: int,
                        implementation_class_uid: str, implementation_version_name: str) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing one transfer syntax per
    (abstract syntax, transfer syntax) pair: context IDs 1, 3, 5, ... in
    ``pairs`` order (the C-MOVE sender's, services/store_scu.py)."""
    body = [struct.pack(">HH", 1, 0), _ae(called_ae), _ae(calling_ae), bytes(32),
            _item(0x10, APPLICATION_CONTEXT.encode())]
    for n, (sop_class, ts) in enumerate(pairs):
        body.append(_item(0x20, bytes((2 * n + 1, 0, 0, 0)) + _item(0x30, sop_class.encode())
                          + _item(0x40, ts.encode())))
    user = (_item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, implementation_class_uid.encode())
            + _item(0x55, implementation_version_name.encode()))
    body.append(_item(0x50, user))
    return _pdu(A_ASSOCIATE_RQ, b"".join(body))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(A_ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_release_rq() -> bytes:
    return _pdu(A_RELEASE_RQ, bytes(4))


def encode_release_rp() -> bytes:
    return _pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int, reason: int) -> bytes:
    return _pdu(A_ABORT, bytes((0, 0, source, reason)))


def decode_abort(pdu: bytes | bytearray) -> tuple[int, int]:
    """(source, reason) of an A-ABORT PDU; lenient, as an abort is final anyway."""
    if len(pdu) >= 10:
        return pdu[8], pdu[9]
    return ABORT_SOURCE_PROVIDER, 0


_PDV_PDU_HEADER = struct.Struct(">BBIIBB")  # PDU header, PDV length, context ID, message control header


def encode_pdata(context_id: int, payload: bytes | memoryview, command: bool, max_pdu: int) -> bytes:
    """P-DATA-TF PDUs carrying ``payload`` as one message, fragmented so no PDU
    exceeds the peer's maximum (0 = unlimited). Returned as one bytes object
    so the caller writes it at once."""
    flag = 1 if command else 0
    room = len(payload) if max_pdu == 0 else max(1, max_pdu - 6)
    if len(payload) <= room:  # one PDU (every command set, most answers): no slicing
        return _PDV_PDU_HEADER.pack(P_DATA_TF, 0, len(payload) + 6, len(payload) + 2, context_id, flag | 2) + payload
    out = []
    pos = 0
    while True:
        chunk = payload[pos : pos + room]
        pos += len(chunk)
        last = pos >= len(payload)
        mch = flag | (2 if last else 0)
        out.append(_PDV_PDU_HEADER.pack(P_DATA_TF, 0, len(chunk) + 6, len(chunk) + 2, context_id, mch) + chunk)
        if last:
            return b"".join(out)
