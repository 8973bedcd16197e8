"""Statistics: totals, disk usage, trends per day / modality / calling AE."""

from __future__ import annotations

import sys
import time

import orjson
import pytest

from fastscp.catalog import CatalogWriter, collect_stats, schema
from fastscp.cli_catalog import main as catalog_main
from fastscp.catalog.stats import format_stats
from test_catalog_support import make_info

DAY = 86400.0


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "i.db"
    now = time.time()
    with CatalogWriter(path) as w:
        for i in range(6):  # today: 4 CT from SCU_A, 2 MR from SCU_B
            w.enqueue(make_info(i, study=0, series=0 if i < 4 else 1,
                                modality="CT" if i < 4 else "MR",
                                calling_ae="SCU_A" if i < 4 else "SCU_B",
                                received_at=now, file_size=1000))
        for i in range(6, 9):  # three days ago
            w.enqueue(make_info(i, study=1, series=0, modality="CT", calling_ae="SCU_A",
                                received_at=now - 3 * DAY, file_size=2000))
        w.enqueue(make_info(9, study=2, series=0, modality="US", calling_ae="OLD",
                            received_at=now - 40 * DAY, file_size=5000))
        w.record_association("a1", "1.2.3.4:1", "SCU_A", "FASTSCP", now - 5, now, 4, 4000, "released")
    return path


def test_collect_stats(db, tmp_path):
    conn = schema.connect(db, read_only=True)
    st = collect_stats(conn, days=7, storage_dir=tmp_path)
    conn.close()
    assert (st.patients, st.studies, st.series, st.instances) == (3, 3, 4, 10)
    assert st.bytes_stored == 6 * 1000 + 3 * 2000 + 5000
    assert st.associations == 1 and st.missing_instances == 0
    assert [(n, b) for _, n, b in st.per_day] == [(3, 6000), (6, 6000)]  # the 40-day-old row is out
    assert st.per_modality == [("CT", 7, 10000), ("MR", 2, 2000)]
    assert st.per_calling_ae == [("SCU_A", 7, 10000), ("SCU_B", 2, 2000)]
    assert st.disk_total and st.disk_free is not None and st.disk_free <= st.disk_total
    text = format_stats(st)
    assert "instances    10" in text and "SCU_B" in text and "free" in text
    conn = schema.connect(db, read_only=True)
    with pytest.raises(ValueError):
        collect_stats(conn, days=0)
    conn.close()


def test_collect_stats_reads_one_snapshot(db):
    """The writer commits between two of the counts' queries: every count
    is still of the same moment (this raced in a server's GET /stats: the
    instances of a batch counted, their studies not)."""
    conn = schema.connect(db)
    reader, writer = conn.cursor(), conn.cursor()

    class CommitsAfterTheFirstQuery:
        queries = 0

        def __getattr__(self, name):  # begin, rollback
            return getattr(reader, name)

        def execute(self, *args):
            result = reader.execute(*args)
            self.queries += 1
            if self.queries == 1:
                writer.execute("UPDATE instances SET status = 'missing'")  # its own transaction, committed
            return result

    st = collect_stats(CommitsAfterTheFirstQuery(), days=7)
    assert (st.instances, st.missing_instances, st.bytes_stored) == (10, 0, 17000)
    assert sum(n for _, n, _ in st.per_modality) == 9  # the 40-day-old one is out of the window
    assert collect_stats(reader, days=7).instances == 0  # the update, seen once committed
    conn.close()


def test_stats_command_text_and_json(db, tmp_path, capsys):
    assert catalog_main(["stats", "--days", "60", "--index-db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "US" in out and "OLD" in out and "pass --storage-dir" in out
    assert catalog_main(["stats", "--format", "json", "--storage-dir", str(tmp_path),
                         "--index-db", str(db)]) == 0
    data = orjson.loads(capsys.readouterr().out)[0]
    assert data["instances"] == 10 and data["disk_total"] > 0


def test_stats_plot_without_matplotlib_says_how_to_get_it(db, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    rc = catalog_main(["stats", "--plot", str(tmp_path / "t.png"), "--index-db", str(db)])
    assert rc == 2
    assert "pip install 'fastscp[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()


def test_stats_plot_writes_a_png(db, tmp_path):
    pytest.importorskip("matplotlib", reason="the optional 'plot' extra is not installed")
    png = tmp_path / "t.png"
    assert catalog_main(["stats", "--plot", str(png), "--index-db", str(db)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
