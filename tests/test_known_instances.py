"""The duplicate check with an index: the UID Bloom filter (storage/uidfilter.py),
its fill from DuckDB (catalog/known.py) and ``IndexedInstances`` (storage/duplicates.py),
with a real DuckDB index and real Part-10 files."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastscp.catalog import CatalogWriter, schema
from fastscp.catalog.known import IndexConfirm, count_instances, fill_filter
from fastscp.catalog.rows import BatchWriter
from fastscp.storage.duplicates import DuplicateGuard, IndexedInstances, Outcome
from fastscp.storage.uidfilter import UidFilter, uid_digest, uid_hash
from test_catalog_support import make_info
from test_duplicates import store

UIDS = [f"1.2.826.0.1.3680043.9.8.{i}" for i in range(2000)]


def test_uid_hash_is_duckdbs_md5_number_halves() -> None:
    """The Python side and the SQL side must place a UID on the same bits."""
    conn = duckdb.connect()
    samples = [*UIDS[:50], "1.2.3", "", "9" * 64, "1.2.840.10008.5.1.4.1.1.2"]
    got = conn.execute("SELECT u, md5_number_lower(u), md5_number_upper(u) FROM unnest(?) t(u)",
                       [samples]).fetchall()
    assert len(got) == len(samples)
    for uid, lower, upper in got:
        assert uid_hash(uid) == (lower, upper)


@given(st.text())
def test_uid_digest_is_md5_of_any_text(text: str) -> None:
    """CPython's own MD5 (uidfilter's ``_md5``) gives hashlib's digest of the
    UID's UTF-8 bytes, lone surrogates kept as the bytes they escape."""
    assert uid_digest(text) == hashlib.md5(text.encode("utf-8", "surrogateescape")).digest()


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def test_filter_memory_is_taken_as_bits_are_set() -> None:
    """A filter for 10 M UIDs is 15 MB; an index that is empty (or small)
    does not hold it all from start: a page counts once a bit in it is set
    (issue 23, idle memory). A zeroed bytearray would take the 15 MB at once."""
    before = _rss_kib()
    big = UidFilter(10_000_000)
    assert big.nbytes == 15_000_000
    empty = _rss_kib() - before
    for uid in UIDS[:100]:  # at most 400 pages
        big.add(uid)
    assert all(u in big for u in UIDS[:100])
    assert empty < 3_000, empty
    assert _rss_kib() - before < 5_000


def test_bulk_and_single_adds_set_the_same_bits() -> None:
    one_by_one, in_bulk = UidFilter(500), UidFilter(500)
    for uid in UIDS:
        one_by_one.add(uid)
    halves = np.array([uid_hash(u) for u in UIDS], dtype=np.uint64)
    in_bulk.add_hashes(halves[:, 0], halves[:, 1])
    assert bytes(in_bulk._bits) == bytes(one_by_one._bits)
    assert in_bulk.added == one_by_one.added == len(UIDS)
    assert all(u in in_bulk for u in UIDS)


def test_the_compiled_bit_work_sets_the_double_hashing_positions() -> None:
    """_ext/bloom.pyx sets exactly the positions the docstring's formula
    gives, also for a filter of more than 2**32 bits (64-bit arithmetic; the
    mapping is anonymous, so only the touched pages take memory)."""
    import mmap

    from fastscp._ext.bloom import set_bits, test_bits

    for m in (500 * 12, 2**32 + 7):
        bits = mmap.mmap(-1, (m + 7) // 8)
        wanted: set[int] = set()
        for uid in UIDS[:20]:
            lower, upper = uid_hash(uid)
            a, b = lower % m, upper % (m - 1) + 1
            want = {(a + i * b) % m for i in range(4)}
            set_bits(bits, uid_digest(uid), m, 4)
            wanted |= want
            assert all(bits[p >> 3] & (1 << (p & 7)) for p in want)
            assert test_bits(bits, uid_digest(uid), m, 4)
        if m < 2**20:  # nothing but the wanted positions is set
            got = {i * 8 + j for i, byte in enumerate(bits[:]) for j in range(8) if byte >> j & 1}
            assert got == wanted
            assert not test_bits(bits, uid_digest(UIDS[-1]), m, 4)
        bits.close()
    with pytest.raises(ValueError):
        test_bits(bytearray(8), b"short", 64, 4)
    with pytest.raises(ValueError):
        set_bits(bytearray(8), uid_digest("1.2"), 65, 4)  # 64 bits hold fewer than m


def test_a_uid_asked_about_then_added_is_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver asks about a UID before its rename and adds it after: one
    hash for both. Another UID between them is hashed anew and sets its own
    bits, never the last one's."""
    import fastscp.storage.uidfilter as uidfilter

    hashed: list[str] = []

    def counting(uid: str) -> bytes:
        hashed.append(uid)
        return uid_digest(uid)

    monkeypatch.setattr(uidfilter, "uid_digest", counting)
    f, reference = UidFilter(500), UidFilter(500)
    assert UIDS[0] not in f
    f.add(UIDS[0])
    assert hashed == [UIDS[0]]
    assert UIDS[1] not in f
    f.add(UIDS[2])  # not the UID asked about last
    assert hashed == [UIDS[0], UIDS[1], UIDS[2]]
    reference.add(UIDS[0])
    reference.add(UIDS[2])
    assert bytes(f._bits) == bytes(reference._bits)
    assert UIDS[0] in f and UIDS[2] in f


def test_false_positive_rate_is_what_the_size_promises() -> None:
    f = UidFilter(len(UIDS))  # full to capacity: 12 bits a UID, 4 positions
    for uid in UIDS:
        f.add(uid)
    expected = f.expected_false_positive_rate()
    assert 0.002 < expected < 0.02
    others = [f"2.25.{i}" for i in range(50_000)]
    rate = sum(u in f for u in others) / len(others)
    assert expected / 2 < rate < expected * 2
    assert f.nbytes == 3000  # 12 bits for each of 2000
    assert UidFilter(2001).nbytes == 3008  # rounded up to whole 64-bit words


def _index(tmp_path: Path, infos: list) -> Path:  # type: ignore[type-arg]
    db = tmp_path / "i.db"
    conn = schema.connect(db)
    BatchWriter(conn).write(infos)
    conn.close()
    return db


def test_fill_filter_reads_every_row_in_chunks(tmp_path: Path) -> None:
    root = tmp_path / "store"
    infos = [make_info(i, path=str(root / f"{i}.dcm")) for i in range(2000)]
    conn = schema.connect(_index(tmp_path, infos))
    f = UidFilter.for_rows(count_instances(conn), minimum=1000)
    assert fill_filter(conn, f, chunk=300) == 2000  # several chunks, none lost at their edges
    assert all(info.sop_instance_uid in f for info in infos)
    conn.close()


@pytest.fixture
def indexed(tmp_path: Path) -> tuple[Path, duckdb.DuckDBPyConnection, list]:  # type: ignore[type-arg]
    """A storage tree with two instances on disk and in the index, one row
    marked missing, and one present row outside the tree."""
    root = (tmp_path / "store").resolve()
    a, b = root / "A" / "1.dcm", root / "B" / "2.dcm"
    infos = [
        dataclasses.replace(make_info(1, path=str(a)), sop_instance_uid="1.2.3", content_hash=store(a, "1.2.3")),
        dataclasses.replace(make_info(2, path=str(b)), sop_instance_uid="1.2.4", content_hash=store(b, "1.2.4")),
        make_info(3, path=str(root / "gone.dcm")),
        make_info(4, path=str(tmp_path / "elsewhere" / "4.dcm")),
    ]
    conn = schema.connect(_index(tmp_path, infos))
    conn.execute("UPDATE instances SET status = 'missing' WHERE sop_instance_uid = ?", [infos[2].sop_instance_uid])
    return root, conn, infos


def _known(root: Path, conn: duckdb.DuckDBPyConnection, calls: list[str] | None = None,
           capacity: int = 1000) -> IndexedInstances:
    confirm = IndexConfirm(conn.cursor, root)

    def counted(uid: str) -> tuple[str, str] | None:
        if calls is not None:
            calls.append(uid)
        return confirm(uid)

    return IndexedInstances(root, UidFilter(capacity), counted, confirm.close)


def test_a_new_uid_costs_no_index_query_once_the_filter_is_ready(indexed) -> None:  # type: ignore[no-untyped-def]
    root, conn, infos = indexed
    calls: list[str] = []
    known = _known(root, conn, calls)
    fill_filter(conn, known.filter)
    known.mark_ready()
    new = [f"2.25.{i}" for i in range(300)]
    assert [known.lookup(u) for u in new] == [None] * 300
    # a 1000-UID filter holding 4: a false positive among 300 is unlikely (< 1e-6 each)
    assert calls == []
    assert known.lookup("1.2.3") == (infos[0].path, infos[0].content_hash)
    assert calls == ["1.2.3"]


def test_a_filter_false_positive_is_confirmed_against_the_index_and_is_new(indexed) -> None:  # type: ignore[no-untyped-def]
    root, conn, _ = indexed
    calls: list[str] = []
    known = _known(root, conn, calls, capacity=1)  # 64 bits: most UIDs hit
    fill_filter(conn, known.filter)
    for i in range(1000):
        known.filter.add(f"9.9.{i}")  # crowd it
    known.mark_ready()
    fp = next(u for u in (f"2.25.{i}" for i in range(10_000)) if u in known.filter)
    assert known.lookup(fp) is None
    assert calls == [fp] and known.confirmed == 1 and known.unconfirmed == 1
    assert fp not in known


def test_only_present_rows_under_the_root_are_known(indexed) -> None:  # type: ignore[no-untyped-def]
    root, conn, infos = indexed
    known = _known(root, conn)
    fill_filter(conn, known.filter)
    known.mark_ready()
    assert infos[2].sop_instance_uid in known.filter and known.lookup(infos[2].sop_instance_uid) is None  # missing
    assert infos[3].sop_instance_uid in known.filter and known.lookup(infos[3].sop_instance_uid) is None  # outside
    assert known.lookup("1.2.4") == (infos[1].path, infos[1].content_hash)


def test_before_the_filter_is_filled_every_lookup_asks_the_index(indexed) -> None:  # type: ignore[no-untyped-def]
    root, conn, infos = indexed
    calls: list[str] = []
    known = _known(root, conn, calls)  # empty filter, not ready
    assert "1.2.3" not in known.filter
    assert known.lookup("1.2.3") == (infos[0].path, infos[0].content_hash)
    assert known.lookup("2.25.1") is None
    assert calls == ["1.2.3", "2.25.1"]


def test_recent_stores_are_known_until_the_writer_has_them(indexed) -> None:  # type: ignore[no-untyped-def]
    root, conn, _ = indexed
    calls: list[str] = []
    known = _known(root, conn, calls)
    known.mark_ready()  # an empty filter, ready: the index knows nothing new
    known.record("5.5.5", "C/5.dcm", "h5")
    assert known.lookup("5.5.5") == ("C/5.dcm", "h5") and calls == []
    assert known.pending == 1
    known.written([("5.5.5", str(root / "D" / "5.dcm"))])  # another copy's row: keep ours
    assert known.pending == 1
    known.written([("5.5.5", str(root / "C" / "5.dcm"))])
    assert known.pending == 0
    # the index (not written here) does not have it: the filter still sends the lookup there
    assert known.lookup("5.5.5") is None and calls == ["5.5.5"]
    known.record("6.6.6", "E/6.dcm", "h6")
    known.forget("6.6.6")
    assert known.pending == 0


def test_the_writer_hands_written_rows_to_the_duplicate_check(tmp_path: Path) -> None:
    root = (tmp_path / "store").resolve()
    writer = CatalogWriter(tmp_path / "w.db", batch_size=10, flush_interval=0.05)
    try:
        confirm = IndexConfirm(writer.cursor, root)
        known = IndexedInstances(root, UidFilter(100), confirm, confirm.close)
        known.mark_ready()
        writer.on_written = lambda infos: known.written([(i.sop_instance_uid, i.path) for i in infos])
        info = make_info(7, path=str(root / "P" / "7.dcm"), received_at=time.time())
        known.record(info.sop_instance_uid, "P/7.dcm", info.content_hash)
        writer.enqueue(info)
        assert writer.flush(30)
        assert known.pending == 0
        assert known.lookup(info.sop_instance_uid) == (info.path, info.content_hash)  # from the index now
        known.close()
    finally:
        writer.close()


@pytest.mark.parametrize("policy, outcome", [("reject", Outcome.REJECTED), ("ignore", Outcome.IGNORED),
                                             ("keep-both", Outcome.KEPT_BOTH), ("overwrite", Outcome.OVERWRITTEN)])
def test_an_indexed_instance_re_sent_to_another_path_is_a_duplicate(indexed, policy: str,  # type: ignore[no-untyped-def]
                                                                     outcome: Outcome) -> None:
    """The naming target differs from where the index has the instance (the
    naming scheme changed, say): only the index can tell."""
    root, conn, infos = indexed
    known = _known(root, conn)
    fill_filter(conn, known.filter)
    known.mark_ready()
    guard = DuplicateGuard(root, policy, index=known)
    res = guard.resolve("1.2.3", "0" * 32, root / "elsewhere" / "1.dcm")
    assert res.decision.outcome is outcome
    assert res.previous == Path(infos[0].path)
    same = guard.resolve("1.2.3", infos[0].content_hash, root / "elsewhere" / "1.dcm")
    assert same.decision.outcome is Outcome.IDENTICAL


def test_a_full_filter_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    known = IndexedInstances(tmp_path, UidFilter(3), lambda uid: None)
    with caplog.at_level("WARNING", logger="fastscp.storage"):
        for i in range(3):
            known.record(f"1.{i}", f"{i}.dcm", "h")
        assert "is full" not in caplog.text
        for i in range(3, 6):
            known.record(f"1.{i}", f"{i}.dcm", "h")
    assert caplog.text.count("is full") == 1


def test_a_failing_index_is_logged_once_and_its_cursor_replaced(indexed, caplog) -> None:  # type: ignore[no-untyped-def]
    root, conn, infos = indexed
    cursors: list[duckdb.DuckDBPyConnection] = []

    def cursor() -> duckdb.DuckDBPyConnection:
        cursors.append(conn.cursor())
        return cursors[-1]

    confirm = IndexConfirm(cursor, root)
    known = IndexedInstances(root, UidFilter(1000), confirm, confirm.close)
    assert known.lookup("1.2.3") == (infos[0].path, infos[0].content_hash)
    cursors[0].close()  # as when the writer reopened its database: the old cursor fails
    assert known.lookup("1.2.3") == (infos[0].path, infos[0].content_hash)  # a new cursor answered
    assert len(cursors) == 2 and known.confirm_errors == 0
    conn.close()  # now the index itself is gone
    with caplog.at_level("WARNING", logger="fastscp.storage"):
        assert known.lookup("1.2.3") is None and known.lookup("1.2.4") is None
    assert known.confirm_errors == 2
    assert caplog.text.count("cannot ask the index") == 1
