"""The Cython PDU framer (_ext/framer.pyx) on byte fixtures fed whole, one
byte at a time, in random chunks and with trailing data."""

from __future__ import annotations

import os
import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from _pdu_fixtures import (
    ABORT_BY_USER,
    CT_IMAGE,
    RELEASE_RP,
    RELEASE_RQ,
    associate_rq,
    chunkings,
    message,
    pdata,
    pdv,
)

from fastscp._ext.framer import EV_COMMAND, EV_DATASET, EV_PDU, FramingError, PDUFramer, decode_command
from fastscp._ext.sockio import tcp_quickack
from fastscp.protocol.dimse import C_STORE_RQ, encode_request


def drain(framer: PDUFramer) -> list[tuple]:
    """Every event now available; dataset views copied (they die at the next read)."""
    out = []
    while (ev := framer.next_event()) is not None:
        if ev[0] == EV_DATASET:
            assert isinstance(ev[2], memoryview)
            ev = (ev[0], ev[1], bytes(ev[2]), ev[3])
        out.append(ev)
    return out


def run(chunks: list[bytes], **kw) -> tuple[list[tuple], PDUFramer]:
    framer = PDUFramer(**kw)
    events = []
    for chunk in chunks:
        framer.feed(chunk)
        events += drain(framer)
    return events, framer


def run_buffered(chunks: list[bytes], **kw) -> list[tuple]:
    """The BufferedProtocol contract: write into get_buffer(), report with buffer_updated()."""
    framer = PDUFramer(**kw)
    events = []
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            buf = framer.get_buffer(-1)
            n = min(len(buf), len(view))
            assert n > 0
            buf[:n] = view[:n]
            framer.buffer_updated(n)
            view = view[n:]
            events += drain(framer)
    return events


def every_way(data: bytes, expected: list[tuple], **kw) -> None:
    """``data`` yields ``expected`` however it is split, and with the next
    PDU's first bytes behind it those stay buffered without an event."""
    for name, chunks in chunkings(data):
        events, framer = run(chunks, **kw)
        assert events == expected, name
        assert framer.buffered == 0, name
        assert run_buffered(chunks, **kw) == expected, name
    trailer = RELEASE_RQ[:5]
    for name, chunks in chunkings(data + trailer, seed=1):
        events, framer = run(chunks, **kw)
        assert events == expected, name + "+trailer"
        assert framer.buffered == len(trailer), name + "+trailer"
        framer.feed(RELEASE_RQ[5:])
        assert drain(framer) == [(EV_PDU, 0x05, RELEASE_RQ)]


STORE_CMD = encode_request(C_STORE_RQ, 7, CT_IMAGE, "1.2.3.4.5", data_set=True)


# ---- whole PDUs -----------------------------------------------------------------------


@pytest.mark.parametrize("pdu", [RELEASE_RQ, RELEASE_RP, ABORT_BY_USER, associate_rq()], ids=["release-rq", "release-rp", "abort", "associate-rq"])
def test_non_pdata_pdu_comes_back_whole(pdu):
    every_way(pdu, [(EV_PDU, pdu[0], pdu)])


def test_several_pdus_in_one_stream():
    rq = associate_rq()
    data = rq + pdata(pdv(1, STORE_CMD, command=True, last=True)) + RELEASE_RQ
    every_way(data, [(EV_PDU, 1, rq), (EV_COMMAND, 1, STORE_CMD), (EV_PDU, 5, RELEASE_RQ)])


def test_pdu_type_and_bytes_types():
    framer = PDUFramer()
    framer.feed(RELEASE_RQ)
    kind, ptype, raw = framer.next_event()
    assert (kind, ptype) == (EV_PDU, 5) and type(raw) is bytes


# ---- commands ---------------------------------------------------------------------------


def test_command_in_one_pdv():
    every_way(pdata(pdv(3, STORE_CMD, command=True, last=True)), [(EV_COMMAND, 3, STORE_CMD)])


def test_command_split_over_pdvs_in_one_pdu():
    pieces = [STORE_CMD[:10], STORE_CMD[10:11], STORE_CMD[11:]]
    data = pdata(*(pdv(5, p, command=True, last=i == 2) for i, p in enumerate(pieces)))
    every_way(data, [(EV_COMMAND, 5, STORE_CMD)])


def test_command_split_over_pdus_decodes():
    data = message(1, STORE_CMD, command=True, fragment=7)
    assert data.count(b"\x04\x00") > 5  # really several PDUs
    expected = [(EV_COMMAND, 1, STORE_CMD)]
    every_way(data, expected)
    events, _ = run([data])
    cmd = decode_command(events[0][2])
    assert cmd[0x00000100] == C_STORE_RQ and cmd[0x00001000] == "1.2.3.4.5"


def test_command_larger_than_64k_is_refused():
    big = bytes(40000)
    data = pdata(pdv(1, big, command=True, last=False)) + pdata(pdv(1, big, command=True, last=True))
    framer = PDUFramer(max_pdata=65536)
    framer.feed(data)
    with pytest.raises(FramingError) as info:
        drain(framer)
    assert info.value.reason == 6


# ---- datasets ---------------------------------------------------------------------------


def test_dataset_fragments_reassemble_exactly():
    dataset = os.urandom(5000)
    data = pdata(pdv(1, STORE_CMD, command=True, last=True)) + message(1, dataset, command=False, fragment=999, per_pdu=2)
    for name, chunks in chunkings(data):
        events, _ = run(chunks, max_pdata=4096)
        assert events[0] == (EV_COMMAND, 1, STORE_CMD), name
        frags = events[1:]
        assert all(e[0] == EV_DATASET and e[1] == 1 for e in frags), name
        assert b"".join(e[2] for e in frags) == dataset, name
        assert [e[3] for e in frags] == [False] * (len(frags) - 1) + [True], name
        assert run_buffered(chunks, max_pdata=4096) == events, name


def test_dataset_fragments_are_views_of_the_receive_buffer():
    framer = PDUFramer()
    framer.feed(pdata(pdv(1, b"\x01\x02\x03\x04", command=False, last=True)))
    kind, ctx, view, last = framer.next_event()
    assert (kind, ctx, last) == (EV_DATASET, 1, True)
    assert isinstance(view, memoryview) and isinstance(view.obj, bytearray)  # no copy made
    assert bytes(view) == b"\x01\x02\x03\x04"


def test_dataset_bigger_than_the_initial_buffer():
    dataset = os.urandom(3 << 20)
    data = pdata(pdv(1, dataset, command=False, last=True))
    rng = random.Random(3)
    chunks, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, 200_000)
        chunks.append(data[pos : pos + n])
        pos += n
    assert run_buffered(chunks, max_pdata=4 << 20) == [(EV_DATASET, 1, dataset, True)]


def test_empty_fragment_pdv_is_passed_on():
    # item length 2: context ID and header only, a zero-byte last fragment
    every_way(pdata(pdv(1, b"abcd", command=False, last=False), pdv(1, b"", command=False, last=True)),
              [(EV_DATASET, 1, b"abcd", False), (EV_DATASET, 1, b"", True)])


def test_dataset_in_progress_tracks_the_open_dataset():
    framer = PDUFramer()
    assert framer.dataset_in_progress is None
    framer.feed(pdata(pdv(3, b"ab", command=False, last=False)))
    drain(framer)
    assert framer.dataset_in_progress == 3
    framer.feed(pdata(pdv(3, b"cd", command=False, last=True)))
    drain(framer)
    assert framer.dataset_in_progress is None


def test_discard_forgets_partial_pdu_and_message():
    framer = PDUFramer()
    framer.feed(pdata(pdv(3, b"ab", command=False, last=False)) + RELEASE_RQ[:3])
    drain(framer)
    framer.discard()
    assert framer.buffered == 0 and framer.dataset_in_progress is None
    # a command is fine again: no "command before the dataset ended"
    framer.feed(pdata(pdv(1, STORE_CMD, command=True, last=True)))
    assert drain(framer) == [(EV_COMMAND, 1, STORE_CMD)]


def test_bytes_received_counts_everything():
    data = associate_rq() + RELEASE_RQ
    _, framer = run([data[:10], data[10:]])
    assert framer.bytes_received == len(data)


def test_buffer_updated_beyond_the_buffer_is_refused():
    framer = PDUFramer()
    buf = framer.get_buffer(-1)
    with pytest.raises(ValueError):
        framer.buffer_updated(len(buf) + 1)
    with pytest.raises(ValueError):
        framer.buffer_updated(-1)


def test_limits_too_small_refused():
    with pytest.raises(ValueError):
        PDUFramer(max_pdata=4)


# ---- rule breaks -------------------------------------------------------------------------


def framing_error(data: bytes, **kw) -> FramingError:
    """The FramingError ``data`` raises, fed whole and byte by byte (it must
    be raised both ways, and before any event that follows it)."""
    reasons = []
    for name, chunks in [c for c in chunkings(data) if c[0] in ("whole", "bytewise")]:
        framer = PDUFramer(**kw)
        try:
            for chunk in chunks:
                framer.feed(chunk)
                drain(framer)
        except FramingError as exc:
            reasons.append(exc)
        else:
            pytest.fail(f"no FramingError ({name})")
    assert reasons[0].reason == reasons[1].reason
    return reasons[0]


def test_pdata_longer_than_our_maximum():
    # header alone is enough: we do not wait for 1 MB we would refuse anyway
    exc = framing_error(bytes.fromhex("04 00 00001001"), max_pdata=4096)
    assert exc.reason == 6
    assert "4097" in str(exc)


def test_pdata_of_exactly_our_maximum_is_fine():
    data = pdata(pdv(1, bytes(4096 - 6), command=False, last=True))
    assert int.from_bytes(data[2:6], "big") == 4096
    events, _ = run([data], max_pdata=4096)
    assert events == [(EV_DATASET, 1, bytes(4090), True)]


def test_other_pdu_longer_than_its_limit():
    rq = associate_rq()
    assert framing_error(rq, max_other=len(rq) - 7).reason == 6
    events, _ = run([rq], max_other=len(rq) - 6)
    assert events == [(EV_PDU, 1, rq)]


@pytest.mark.parametrize("ptype", [0x00, 0x08, 0x09, 0x7F, 0xFF])
def test_unrecognized_pdu_type(ptype):
    assert framing_error(bytes([ptype]) + RELEASE_RQ[1:]).reason == 1


def test_unrecognized_pdu_type_after_a_good_pdu():
    framer = PDUFramer()
    framer.feed(RELEASE_RQ + b"\x11\x00\x00\x00\x00\x00")
    assert framer.next_event() == (EV_PDU, 5, RELEASE_RQ)
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert info.value.reason == 1


@pytest.mark.parametrize("length", [0, 1, 5])
def test_pdata_without_room_for_a_pdv(length):
    assert framing_error(pdata(pdu_length=length) + bytes(length)).reason == 6


@pytest.mark.parametrize("item_length", [0, 1])
def test_pdv_item_length_zero_or_one(item_length):
    data = pdata(pdv(1, b"abcd", command=False, last=True, item_length=item_length) + b"")
    assert framing_error(data).reason == 6


def test_pdv_running_past_its_pdu():
    item = pdv(1, b"abcd", command=False, last=True, item_length=7)  # says 7, has 6
    assert framing_error(pdata(item)).reason == 6


def test_pdv_header_running_past_its_pdu():
    good = pdv(1, b"abcd", command=False, last=True)
    for extra in (b"\x00", b"\x00\x00\x00\x02\x01"):  # 1 and 5 stray bytes after the last PDV
        assert framing_error(pdata(good + extra)).reason == 6


@pytest.mark.parametrize("ctx", [0, 2, 254])
def test_even_presentation_context_id(ctx):
    assert framing_error(pdata(pdv(ctx, b"ab", command=False, last=True))).reason == 6


@pytest.mark.parametrize("mch", [0x04, 0x08, 0x80, 0xFC, 0xFF])
def test_reserved_message_control_bits(mch):
    assert framing_error(pdata(pdv(1, b"ab", command=False, last=True, mch=mch))).reason == 6


def test_command_fragment_inside_a_dataset():
    data = pdata(pdv(1, b"ds", command=False, last=False)) + pdata(pdv(1, STORE_CMD, command=True, last=True))
    assert framing_error(data).reason == 2


def test_dataset_fragment_inside_a_command():
    data = pdata(pdv(1, STORE_CMD[:8], command=True, last=False), pdv(1, b"ds", command=False, last=True))
    assert framing_error(data).reason == 2


def test_command_fragments_on_two_contexts():
    data = pdata(pdv(1, STORE_CMD[:8], command=True, last=False), pdv(3, STORE_CMD[8:], command=True, last=True))
    assert framing_error(data).reason == 2


def test_dataset_fragments_on_two_contexts():
    data = pdata(pdv(1, b"ab", command=False, last=False), pdv(3, b"cd", command=False, last=True))
    assert framing_error(data).reason == 2


def test_command_after_a_finished_dataset_is_fine():
    data = (
        pdata(pdv(1, STORE_CMD, command=True, last=True), pdv(1, b"ab", command=False, last=True))
        + pdata(pdv(3, STORE_CMD, command=True, last=True), pdv(3, b"cd", command=False, last=True))
    )
    every_way(data, [(EV_COMMAND, 1, STORE_CMD), (EV_DATASET, 1, b"ab", True), (EV_COMMAND, 3, STORE_CMD), (EV_DATASET, 3, b"cd", True)])


def test_events_before_the_error_still_come_out():
    framer = PDUFramer()
    framer.feed(pdata(pdv(1, b"ab", command=False, last=False), pdv(2, b"cd", command=False, last=True)))
    first = framer.next_event()
    assert first[:2] == (EV_DATASET, 1) and bytes(first[2]) == b"ab" and first[3] is False
    with pytest.raises(FramingError):
        framer.next_event()


# ---- property: only events or FramingError ---------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 1000), max_size=6))
def test_random_bytes_give_events_or_framing_error(data, cuts):
    framer = PDUFramer(max_pdata=256, max_other=256)
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    try:
        for a, b in zip(bounds, bounds[1:]):
            framer.feed(data[a:b])
            for ev in drain(framer):
                assert ev[0] in (EV_PDU, EV_COMMAND, EV_DATASET)
                if ev[0] == EV_PDU:
                    assert 1 <= ev[1] <= 7 and ev[1] != 4 and len(ev[2]) <= 256 + 6
                    assert int.from_bytes(ev[2][2:6], "big") == len(ev[2]) - 6
                else:
                    assert ev[1] & 1  # only odd context IDs get through
    except FramingError as exc:
        assert exc.reason in (1, 2, 6)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=2000), fragment=st.integers(1, 300), per_pdu=st.integers(1, 4), cuts=st.lists(st.integers(0, 5000), max_size=10))
def test_any_fragmentation_reassembles(payload, fragment, per_pdu, cuts):
    data = message(7, payload, command=False, fragment=fragment, per_pdu=per_pdu)
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    events, _ = run([data[a:b] for a, b in zip(bounds, bounds[1:])], max_pdata=4096)
    assert b"".join(e[2] for e in events) == payload
    assert [e[3] for e in events][-1] is True and not any(e[3] for e in events[:-1])


def test_tcp_quickack_sets_the_option_on_the_descriptor_and_reports_failure():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 0
        tcp_quickack(server.fileno())
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
        r, w = os.pipe()  # not a socket: the kernel refuses, and so must we
        try:
            with pytest.raises(OSError):
                tcp_quickack(r)
        finally:
            os.close(r)
            os.close(w)
    finally:
        for s in (client, server, listener):
            s.close()


# ---- the sink: a data set's fragments written in the framer, without events ------------


def _sink_file(tmp_path, name: str = "sink.part"):
    from fastscp._ext.writer import InstanceFile

    path = tmp_path / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    return path, InstanceFile(fd, b"PREFIX", head_limit=64)


def test_sink_takes_middle_fragments_and_hands_back_the_last(tmp_path):
    import xxhash

    dataset = os.urandom(5000)
    head = 1000
    data = message(1, dataset, command=False, fragment=500, per_pdu=2)
    for name, chunks in chunkings(data):
        path, writer = _sink_file(tmp_path, f"{abs(hash(name))}.part")
        hashed = xxhash.xxh3_128()
        framer = PDUFramer(max_pdata=4096)
        events = []
        for chunk in chunks:
            framer.feed(chunk)
            while (ev := framer.next_event()) is not None:
                assert ev[0] == EV_DATASET
                writer.write(ev[2])  # what the Python path does with an event
                hashed.update(ev[2])
                events.append((bytes(ev[2]), ev[3]))
                if not ev[3]:
                    framer.sink_dataset(writer, hashed.update, 1, 4500)
        writer.finish()
        writer.close()
        # the first fragment, the one past the limit (4500 to 5000 is the
        # last anyway) and the last come as events; the rest went to the file
        assert events[0] == (dataset[:500], False), name
        assert events[-1] == (dataset[4500:], True), name
        assert framer.sunk == 10 - len(events), name
        assert framer.sunk >= 1, name
        assert path.read_bytes() == b"PREFIX" + dataset, name
        assert hashed.hexdigest() == xxhash.xxh3_128(dataset).hexdigest(), name
        assert writer.head == dataset[:64], name


def test_sink_stops_at_its_limit_and_at_another_context(tmp_path):
    _, writer = _sink_file(tmp_path)
    framer = PDUFramer()
    framer.sink_dataset(writer, None, 1, 250)
    framer.feed(pdata(pdv(1, b"a" * 100, command=False, last=False)))
    framer.feed(pdata(pdv(1, b"b" * 100, command=False, last=False)))
    framer.feed(pdata(pdv(1, b"c" * 100, command=False, last=False)))  # 300 > 250: an event, the sink ends
    framer.feed(pdata(pdv(1, b"d" * 10, command=False, last=False)))   # an event: the sink ended
    assert drain(framer) == [(EV_DATASET, 1, b"c" * 100, False), (EV_DATASET, 1, b"d" * 10, False)]
    assert framer.sunk == 2 and writer.dataset_size == 200
    framer.sink_dataset(writer, None, 3, 1 << 30)  # armed for context 3: a fragment on 1 is an event
    framer.feed(pdata(pdv(1, b"e", command=False, last=True)))
    assert drain(framer) == [(EV_DATASET, 1, b"e", True)]
    assert framer.sunk == 2


def test_sink_hands_back_what_the_writer_refuses(tmp_path):
    from fastscp._ext.writer import InstanceFile

    full = InstanceFile(os.open("/dev/full", os.O_WRONLY), b"", head_limit=64)  # every write: ENOSPC
    framer = PDUFramer()
    framer.sink_dataset(full, None, 1, 1 << 30)
    framer.feed(pdata(pdv(1, b"x" * 100, command=False, last=False)))
    assert drain(framer) == [(EV_DATASET, 1, b"x" * 100, False)]  # to be written (and fail) where handled
    assert framer.sunk == 0 and full.dataset_size == 0 and full.head == b""
    with pytest.raises(OSError) as err:
        full.write(b"x" * 100)
    assert err.value.errno == 28
    _, closed = _sink_file(tmp_path)
    closed.close()
    framer.sink_dataset(closed, None, 1, 1 << 30)
    framer.feed(pdata(pdv(1, b"y", command=False, last=False)))
    assert drain(framer) == [(EV_DATASET, 1, b"y", False)]
    assert framer.sunk == 0


def test_unsink_and_discard_end_the_sink(tmp_path):
    _, writer = _sink_file(tmp_path)
    framer = PDUFramer()
    framer.sink_dataset(writer, None, 1, 1 << 30)
    framer.unsink()
    framer.feed(pdata(pdv(1, b"a", command=False, last=False)))
    assert drain(framer) == [(EV_DATASET, 1, b"a", False)]
    framer.sink_dataset(writer, None, 1, 1 << 30)
    framer.discard()
    framer.feed(pdata(pdv(1, b"b", command=False, last=False)))
    assert drain(framer) == [(EV_DATASET, 1, b"b", False)]
    assert framer.sunk == 0 and writer.dataset_size == 0
