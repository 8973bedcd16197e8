"""Property-based fuzzing of the decoders and the state machine (issue 9,
"Bad input"). Extends, does not repeat, the fuzz tests next door:
test_framer.py (random bytes / fragmentation through the framer),
test_association.py (random and mutated streams through the machine with a
well-behaved handler), test_header_fuzz.py (the header scanner).

Here: the command-set decoder on structured and random input; the
A-ASSOCIATE-RQ decoder on mutated requests; the machine driven by a handler
that itself misbehaves at random (rejects, aborts, releases, sends in the
wrong state); the end-of-data-set check. Invariant everywhere: a valid
result or the documented error, never another exception, hang, or output
that is not whole PDUs. Every file in tests/fuzz_corpus/ (seeds and any
crasher found) is replayed through all of them.

FUZZ_EXAMPLES scales the example counts (default 1 = CI; bench/fuzz_long.py
is the long run).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastscp._ext.framer import FramingError, PDUFramer, decode_command
from fastscp.protocol import dimse as D
from fastscp.protocol import pdu as P
from fastscp.protocol.association import Association, AssociationRequested, LocalProtocolError
from fastscp.storage.header import MalformedDataset, check_dataset_end
from test_association import RQ, VALID_STREAM, accept_for, drive

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "1"))
CORPUS = Path(__file__).parent / "fuzz_corpus"
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def examples(n: int) -> settings:
    return settings(FUZZ, max_examples=n * SCALE)


# ---- the command-set decoder -----------------------------------------------------------

def check_command(data: bytes) -> None:
    try:
        cmd = decode_command(data)
    except ValueError:
        return
    assert isinstance(cmd, dict)
    for tag, value in cmd.items():
        assert isinstance(tag, int) and 0 <= tag <= 0xFFFF  # group 0000 only
        assert isinstance(value, (int, str, bytes))
    # what the service does next with a decoded command never raises either
    D.has_dataset(cmd)
    field = cmd.get(D.COMMAND_FIELD)
    if isinstance(field, int):
        D.encode_response((field | 0x8000) & 0xFFFF, cmd.get(D.MESSAGE_ID, 0) if isinstance(cmd.get(D.MESSAGE_ID, 0), int) else 0, D.UNRECOGNIZED_OPERATION)


command_element = st.tuples(
    st.sampled_from([0x0000, 0x0002, 0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x0902, 0x1000, 0x1030, 0x1031, 0x5555]),
    st.binary(max_size=70),
    st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)),  # a lying length, sometimes
    st.sampled_from([0x0000, 0x0000, 0x0000, 0x0008, 0xFFFE]),
)


@examples(600)
@given(st.lists(command_element, max_size=12), st.integers(0, 200))
def test_structured_command_sets(elements, cut) -> None:  # type: ignore[no-untyped-def]
    raw = b"".join(struct.pack("<HHI", group, elem, len(value) if length is None else length) + value
                   for elem, value, length, group in elements)
    check_command(raw)
    check_command(raw[:cut])


@examples(400)
@given(st.binary(max_size=300))
def test_random_command_sets(data: bytes) -> None:
    check_command(data)


# ---- the A-ASSOCIATE-RQ decoder --------------------------------------------------------

@st.composite
def mutated(draw, base: bytes, max_ops: int = 6) -> bytes:  # type: ignore[no-untyped-def]
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "length"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "length" and len(data) >= pos + 2:  # a 16-bit item length made to lie
            data[pos:pos + 2] = struct.pack(">H", draw(st.sampled_from([0, 1, 3, 0xFFFF, draw(st.integers(0, 0xFFFF))])))
    return bytes(data)


def check_associate_rq(pdu: bytes) -> None:
    try:
        request = P.decode_associate_rq(pdu)
    except P.PDUError:
        return
    assert isinstance(request, P.AssociateRequest)
    for ctx in request.contexts:
        assert isinstance(ctx.abstract_syntax, str)


@examples(600)
@given(mutated(RQ))
def test_mutated_associate_requests(pdu: bytes) -> None:
    check_associate_rq(pdu)


# ---- the state machine, with a handler that misbehaves too -----------------------------

def check_out(out: bytes) -> None:
    """Whole PDUs of types an acceptor may send (A-RELEASE-RQ too: it may
    ask for the release itself)."""
    pos = 0
    while pos < len(out):
        assert out[pos] in (0x02, 0x03, 0x04, 0x05, 0x06, 0x07), out[pos:pos + 10]
        (length,) = struct.unpack_from(">I", out, pos + 2)
        pos += 6 + length
    assert pos == len(out)


LOCAL_ACTIONS = ["accept", "reject", "abort", "release", "release_response", "send", "artim", "none", "none"]


@examples(500)
@given(mutated(VALID_STREAM, 4), st.lists(st.integers(0, 10_000), max_size=10),
       st.lists(st.sampled_from(LOCAL_ACTIONS), min_size=1, max_size=40))
def test_machine_with_random_local_primitives(data: bytes, cuts: list[int], actions: list[str]) -> None:
    """After every event the handler does something chosen at random, in
    any state. A primitive the state does not allow raises
    LocalProtocolError (the caller's bug, reported as such); nothing else
    may raise, and what goes out is always whole PDUs."""
    assoc = Association(max_pdu=1024, max_other_pdu=4096)
    assoc.connection_made()
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    step = 0
    for a, b in zip(bounds, bounds[1:]):
        chunk = memoryview(data[a:b])
        while chunk and assoc.state != "Sta1":  # Sta1: the transport is closed, nothing more arrives
            buf = assoc.get_buffer(-1)
            n = min(len(buf), len(chunk))
            buf[:n] = chunk[:n]
            assoc.buffer_updated(n)
            chunk = chunk[n:]
            while (ev := assoc.next_event()) is not None:
                action = actions[step % len(actions)]
                step += 1
                try:
                    if action == "accept" and isinstance(ev, AssociationRequested):
                        assoc.accept(accept_for(assoc))
                    elif action == "accept":
                        assoc.accept(P.AssociateAccept([], 1024, "1.2.3", "X"))
                    elif action == "reject":
                        assoc.reject(1, 1, 1)
                    elif action == "abort":
                        assoc.abort("fuzz")
                    elif action == "release":
                        assoc.request_release()
                    elif action == "release_response":
                        assoc.release_response()
                    elif action == "send":
                        assoc.send_command(1, D.encode_response(D.C_ECHO_RSP, 1, 0))
                    elif action == "artim":
                        assoc.artim_expired()
                except LocalProtocolError:
                    pass
            check_out(assoc.data_to_send())
    last = assoc.connection_lost()
    assert last is None or type(last).__name__ in ("Aborted", "ConnectionClosed")


# ---- the end-of-data-set check ---------------------------------------------------------

DATASET = bytes.fromhex(  # (0008,0016) UI "1.2", (0010,0010) PN "A^B", (7FE0,0010) OW 8 bytes
    "08001600" "5549" "0400" "312e3200"
    "10001000" "504e" "0400" "415e4220"
    "e07f1000" "4f57" "0000" "08000000" "0102030405060708"
)


@examples(600)
@given(mutated(DATASET), st.integers(0, 64), st.sampled_from(["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]))
def test_dataset_end_check(data: bytes, head_len: int, syntax: str) -> None:
    try:
        check_dataset_end(data[:head_len], len(data), syntax, lambda off, n: data[off:off + n])
    except MalformedDataset:
        pass


def test_dataset_end_check_accepts_the_whole_and_refuses_every_cut() -> None:
    check_dataset_end(DATASET, len(DATASET), "1.2.840.10008.1.2.1", lambda o, n: DATASET[o:o + n])
    for head in (0, 10, len(DATASET)):
        check_dataset_end(DATASET[:head], len(DATASET), "1.2.840.10008.1.2.1", lambda o, n: DATASET[o:o + n])
    for cut in range(1, len(DATASET)):
        if cut in (12, 24):  # element boundaries before pixel data: a shorter but whole data set
            continue
        short = DATASET[:cut]
        with pytest.raises(MalformedDataset):
            check_dataset_end(short, len(short), "1.2.840.10008.1.2.1", lambda o, n: short[o:o + n])


# ---- regression corpus -----------------------------------------------------------------

def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.glob("*.bin"))


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_replays_cleanly(path: Path) -> None:
    data = path.read_bytes()
    drive(data, [])
    drive(data, list(range(1, len(data), 7)))  # and in 7-byte reads
    framer = PDUFramer(1024, 4096)
    try:
        framer.feed(data[:4096])
        while framer.next_event() is not None:
            pass
    except FramingError:
        pass
    check_command(data)
    check_associate_rq(data)
    try:
        check_dataset_end(data[:64], len(data), "1.2.840.10008.1.2.1", lambda o, n: data[o:o + n])
    except MalformedDataset:
        pass


def test_corpus_is_there() -> None:
    assert len(corpus_files()) >= 5, "tests/fuzz_corpus/ holds the seeds and regression inputs"
