"""Byte fixtures for the protocol unit tests (PS3.8 9.3).

Association PDUs are encoded by pynetdicom's own PDU classes from primitives,
so our decoder is checked against an independent encoder. P-DATA-TF PDUs and
the small fixed PDUs are assembled by hand here, field by field, with the
layout they follow spelled out, so malformed variants are easy to make.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Iterator, Sequence

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context

APP_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# A-RELEASE-RQ: type 05, reserved 00, PDU length 4, 4 reserved bytes (PS3.8 9.3.6)
RELEASE_RQ = bytes.fromhex("05 00 00000004 00000000")
# A-RELEASE-RP: type 06, reserved, length 4, 4 reserved bytes (PS3.8 9.3.7)
RELEASE_RP = bytes.fromhex("06 00 00000004 00000000")
# A-ABORT: type 07, reserved, length 4, reserved, reserved, source 0 (user), reason 0 (PS3.8 9.3.8)
ABORT_BY_USER = bytes.fromhex("07 00 00000004 00 00 00 00")
# A-ABORT from the service provider (source 2), reason 6 (invalid PDU parameter value)
ABORT_BY_PROVIDER_6 = bytes.fromhex("07 00 00000004 00 00 02 06")


def _user_items(
    max_pdu: int | None,
    implementation_uid: str,
    implementation_version: str | None,
    async_ops: tuple[int, int] | None,
    roles: Sequence[tuple[str, bool, bool]],
    extended: Sequence[tuple[str, bytes]] = (),
    user_identity: tuple[int, bytes] | None = None,
) -> list[object]:
    """pynetdicom's User Information sub-item primitives, for a request or an accept."""
    user: list[object] = []
    if max_pdu is not None:
        item = MaximumLengthNotification()
        item.maximum_length_received = max_pdu
        user.append(item)
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = implementation_uid
    user.append(impl)
    if implementation_version is not None:
        ver = ImplementationVersionNameNotification()
        ver.implementation_version_name = implementation_version
        user.append(ver)
    if async_ops is not None:
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked, window.maximum_number_operations_performed = async_ops
        user.append(window)
    for uid, scu, scp in roles:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = uid
        role.scu_role = scu
        role.scp_role = scp
        user.append(role)
    for uid, info in extended:
        ext = SOPClassExtendedNegotiation()
        ext.sop_class_uid = uid
        ext.service_class_application_information = info
        user.append(ext)
    if user_identity is not None:
        ident = UserIdentityNegotiation()
        ident.user_identity_type, ident.primary_field = user_identity
        user.append(ident)
    return user


def associate_rq(
    contexts: Sequence[tuple[int, str, Sequence[str]]] = ((1, VERIFICATION, (IMPLICIT_LE,)),),
    *,
    calling: str = "SENDER",
    called: str = "MY_PACS",
    app_context: str = APP_CONTEXT,
    max_pdu: int | None = 16384,
    implementation_uid: str = "1.2.826.0.1.3680043.9.3811",
    implementation_version: str | None = "PYNETDICOM_TEST",
    async_ops: tuple[int, int] | None = None,
    roles: Sequence[tuple[str, bool, bool]] = (),
    user_identity: tuple[int, bytes] | None = None,
    protocol_version: int = 1,
    extended: Sequence[tuple[str, bytes]] = (),
) -> bytes:
    """An A-ASSOCIATE-RQ PDU encoded by pynetdicom. ``contexts`` are
    (context ID, abstract syntax, transfer syntaxes in order of preference);
    ``roles`` are (SOP class UID, SCU role, SCP role); ``extended`` are SOP
    Class Extended Negotiation sub-items (SOP class UID, application info)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = app_context
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    pcs = []
    for context_id, abstract, transfers in contexts:
        pc = build_context(abstract, list(transfers))
        pc.context_id = context_id
        pcs.append(pc)
    primitive.presentation_context_definition_list = pcs
    primitive.user_information = _user_items(max_pdu, implementation_uid, implementation_version, async_ops,
                                             roles, extended, user_identity)
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    raw = bytearray(pdu.encode())
    # pynetdicom always writes protocol version 1; bytes 6-7 hold it (PS3.8 9.3.2)
    struct.pack_into(">H", raw, 6, protocol_version)
    return bytes(raw)


def associate_ac(
    results: Sequence[tuple[int, int, str]],
    *,
    max_pdu: int = 32768,
    implementation_uid: str = "1.2.826.0.1.3680043.9.3811",
    implementation_version: str = "PYNETDICOM_TEST",
    roles: Sequence[tuple[str, bool, bool]] = (),
) -> bytes:
    """An A-ASSOCIATE-AC PDU encoded by pynetdicom: ``results`` are
    (context ID, result, transfer syntax) per presentation context;
    ``roles`` are (SOP class UID, SCU role, SCP role)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APP_CONTEXT
    primitive.calling_ae_title = "SENDER"
    primitive.called_ae_title = "MY_PACS"
    primitive.result = 0
    contexts = []
    for context_id, result, ts in results:
        pc = PresentationContext()
        pc.context_id = context_id
        pc.result = result
        pc.transfer_syntax = [ts]
        contexts.append(pc)
    primitive.presentation_context_definition_results_list = contexts
    primitive.user_information = _user_items(max_pdu, implementation_uid, implementation_version, None, roles)
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def pdv(context_id: int, data: bytes, *, command: bool, last: bool, mch: int | None = None, item_length: int | None = None) -> bytes:
    """One presentation data value item (PS3.8 9.3.5.1, E.2): 4-byte item
    length (context ID + header + data), context ID, message control header
    (bit 0 command, bit 1 last fragment), then the fragment."""
    header = mch if mch is not None else (1 if command else 0) | (2 if last else 0)
    length = item_length if item_length is not None else len(data) + 2
    return struct.pack(">IBB", length, context_id, header) + data


def pdata(*items: bytes, pdu_length: int | None = None) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5): type 04, reserved, 4-byte length, PDV items."""
    body = b"".join(items)
    return struct.pack(">BBI", 0x04, 0, len(body) if pdu_length is None else pdu_length) + body


def message(context_id: int, payload: bytes, *, command: bool, fragment: int, per_pdu: int = 1) -> bytes:
    """``payload`` as P-DATA-TF PDUs: fragments of ``fragment`` bytes, ``per_pdu`` PDVs per PDU."""
    pieces = [payload[i : i + fragment] for i in range(0, len(payload), fragment)] or [b""]
    pdvs = [pdv(context_id, p, command=command, last=i == len(pieces) - 1) for i, p in enumerate(pieces)]
    return b"".join(pdata(*pdvs[i : i + per_pdu]) for i in range(0, len(pdvs), per_pdu))


def chunkings(data: bytes, seed: int = 0) -> Iterator[tuple[str, list[bytes]]]:
    """The ways every fixture is fed: whole, one byte at a time, random chunk sizes."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    for n in range(3):
        chunks, pos = [], 0
        while pos < len(data):
            size = rng.randint(1, max(1, len(data) // 3))
            chunks.append(data[pos : pos + size])
            pos += size
        yield f"random{n}", chunks


def join(chunks: Iterable[bytes]) -> bytes:
    return b"".join(chunks)


def read_ac(raw: bytes) -> dict:
    """An A-ASSOCIATE-AC decoded by pynetdicom, as plain values."""
    from pynetdicom.pdu import A_ASSOCIATE_AC

    ac = A_ASSOCIATE_AC()
    ac.decode(raw)
    user = ac.user_information
    assert user is not None
    window = user.async_ops_window
    return {
        "protocol_version": ac.protocol_version,
        "called_ae": ac.called_ae_title,
        "calling_ae": ac.calling_ae_title,
        "application_context": ac.application_context_name,
        "contexts": {pc.context_id: (pc.result, pc.transfer_syntax) for pc in ac.presentation_context},
        "max_pdu": user.maximum_length,
        "implementation_class_uid": user.implementation_class_uid,
        "implementation_version_name": user.implementation_version_name,
        "roles": {uid: (item.scu_role, item.scp_role) for uid, item in user.role_selection.items()},
        "async_ops": None if window is None else (window.maximum_number_operations_invoked, window.maximum_number_operations_performed),
        "extended": {item.sop_class_uid: item.app_info for item in user.ext_neg},
    }
