"""The status endpoint's /query reaches the index and nothing else (issue 20
part 1), tested as classes: every DuckDB table function and every one-string
scalar function is called with the path of a secret file through a real
StatusServer, and must neither return the secret nor create a file nor change
a setting; the functions and statements named in the security review are
each refused outright."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from status_support import TOKEN, LiveStatus

from fastscp.monitor.http import QueryLimits
from fastscp.monitor.service import status_token, token_path


def _functions(kind: str) -> list[str]:
    """Every built-in function of ``kind`` whose first parameter takes a
    string (a path, a pattern, SQL text), from DuckDB's own catalogue, so a
    function added by a DuckDB upgrade is tested without editing this file."""
    conn = duckdb.connect(config={"autoload_known_extensions": False, "autoinstall_known_extensions": False})
    try:
        rows = conn.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = ? "
            "AND len(parameter_types) >= 1 AND parameter_types[1] IN ('VARCHAR', 'VARIANT', 'ANY', 'ANY[]') "
            "ORDER BY 1", [kind]).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


def _pragmas() -> list[str]:
    conn = duckdb.connect(config={"autoload_known_extensions": False, "autoinstall_known_extensions": False})
    try:
        return [r[0] for r in conn.execute("SELECT DISTINCT function_name FROM duckdb_functions() "
                                           "WHERE function_type = 'pragma' ORDER BY 1").fetchall()]
    finally:
        conn.close()


TABLE_FUNCTIONS = _functions("table")
PRAGMAS = _pragmas()
SCALAR_FUNCTIONS = [f for f in _functions("scalar") if f.isidentifier()]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveStatus, Path, str, Path]]:
    root = tmp_path_factory.mktemp("querysec")
    secret = secrets.token_hex(16)
    secret_file = root / "outside" / "secret.txt"
    secret_file.parent.mkdir()
    secret_file.write_text(f"col\n{secret}\n")
    (root / "srv").mkdir()
    srv = LiveStatus(root / "srv")
    sink = root / "sink"  # where a side effect would create files
    sink.mkdir()
    try:
        yield srv, secret_file, secret, sink
    finally:
        srv.close()


def _settings(srv: LiveStatus) -> dict[str, str]:
    cur = srv.writer.cursor()
    try:
        return {n: str(v) for n, v in cur.execute("SELECT name, value FROM duckdb_settings()").fetchall()}
    finally:
        cur.close()


def _assert_contained(srv: LiveStatus, sql: str, secret: str, sink: Path, before: dict[str, str]) -> tuple[int, object]:
    status, doc = srv.query(sql)
    assert secret not in str(doc), (sql, status, doc)
    assert not list(sink.iterdir()), (sql, list(sink.iterdir()))
    assert _settings(srv) == before, sql
    return status, doc


def test_the_enumeration_covers_the_file_functions() -> None:
    # if DuckDB renamed these, the enumeration (not the server) would be wrong
    for name in ("read_text", "read_blob", "read_csv", "read_json", "read_parquet", "glob", "read_duckdb",
                 "parquet_scan", "enable_logging", "query"):
        assert name in TABLE_FUNCTIONS


@pytest.mark.parametrize("fn", TABLE_FUNCTIONS)
def test_every_table_function_on_a_secret_path_reads_nothing(live, fn: str) -> None:  # type: ignore[no-untyped-def]
    srv, secret_file, secret, sink = live
    before = _settings(srv)
    for arg in (f"'{secret_file}'", f"'{secret_file.parent}/*'", f"['{secret_file}']",
                f"'{sink}/x'"):
        _assert_contained(srv, f"SELECT * FROM {fn}({arg})", secret, sink, before)
    assert srv.query("SELECT count(*) FROM instances")[1]["rows"] == [[5]]


def test_every_one_string_scalar_function_on_a_secret_path_reads_nothing(live) -> None:  # type: ignore[no-untyped-def]
    srv, secret_file, secret, sink = live
    before = _settings(srv)
    assert len(SCALAR_FUNCTIONS) > 100
    for fn in SCALAR_FUNCTIONS:
        _assert_contained(srv, f"SELECT {fn}('{secret_file}')", secret, sink, before)


def test_every_pragma_is_refused_and_changes_nothing(live) -> None:  # type: ignore[no-untyped-def]
    srv, _, secret, sink = live
    before = _settings(srv)
    assert len(PRAGMAS) > 10
    for name in PRAGMAS:
        for sql in (f"PRAGMA {name}", f"PRAGMA {name}('{sink}/x')", f"PRAGMA {name} = '{sink}/x'"):
            status, doc = _assert_contained(srv, sql, secret, sink, before)
            assert status in (400, 422), (sql, status, doc)


REFUSED = [
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_blob('{secret}')",
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_csv_auto('{secret}')",
    "SELECT * FROM read_json('{secret}')",
    "SELECT * FROM read_ndjson('{secret}')",
    "SELECT * FROM read_parquet('{secret}')",
    "SELECT * FROM parquet_scan('{secret}')",
    "SELECT * FROM parquet_metadata('{secret}')",
    "SELECT * FROM read_duckdb('{secret}')",
    "SELECT * FROM '{secret}'",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM glob('{sink}/../*')",
    "SELECT * FROM query('SELECT * FROM read_text(''{secret}'')')",
    "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
    "SELECT * FROM enable_logging(storage='file', storage_path='{sink}/log')",
    "SELECT * FROM enable_logging(level='trace')",
    "SELECT * FROM enable_profiling(save_location='{sink}/profile.json')",
    "SELECT * FROM duckdb_settings()  WHERE set_config('threads', '4') IS NULL",
    "ATTACH '{sink}/other.db' AS other",
    "COPY instances TO '{sink}/out.csv'",
    "COPY (SELECT 1) TO '{sink}/out.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{sink}/dump'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD '{sink}/x.duckdb_extension'",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET allowed_directories",
    "PRAGMA enable_profiling",
    "PRAGMA threads = 4",
    "CALL enable_logging(storage='file', storage_path='{sink}/log')",
    "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
]


@pytest.mark.parametrize("template", REFUSED)
def test_named_escape_is_refused(live, template: str) -> None:  # type: ignore[no-untyped-def]
    srv, secret_file, secret, sink = live
    before = _settings(srv)
    sql = template.format(secret=secret_file, sink=sink)
    status, doc = _assert_contained(srv, sql, secret, sink, before)
    assert status in (400, 422), (sql, status, doc)
    assert isinstance(doc, dict) and doc.get("error"), doc


def test_the_lockdown_is_duckdbs_own_setting(live) -> None:  # type: ignore[no-untyped-def]
    srv = live[0]
    settings = _settings(srv)
    assert settings["enable_external_access"] == "false"
    assert settings["lock_configuration"] == "true"
    assert settings["autoload_known_extensions"] == "false"
    assert settings["autoinstall_known_extensions"] == "false"
    # even on the writer's own cursor, not only through /query
    cur = srv.writer.cursor()
    try:
        with pytest.raises(duckdb.Error):
            cur.execute("SELECT * FROM read_text(?)", [str(live[1])])
        with pytest.raises(duckdb.Error):
            cur.execute("SET enable_external_access = true")
    finally:
        cur.close()
    assert os.path.exists(live[1])


# ---- who may ask: token, Host, Origin, Content-Type -----------------------------------



def _raw(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these headers (http.client adds Host only
    when asked to; we pass it ourselves)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_index_data_needs_the_token_and_metrics_do_not(live) -> None:  # type: ignore[no-untyped-def]
    srv = live[0]
    host = {"Host": f"127.0.0.1:{srv.port}"}
    body = json.dumps({"sql": "SELECT 1"}).encode()
    for method, path in (("GET", "/"), ("GET", "/status"), ("GET", "/trend"), ("GET", "/stats"),
                         ("POST", "/query")):
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"fastscp-token-{srv.port}=wrong"}):
            status, headers, _ = _raw(srv.port, method, path, {**host, **auth, "Content-Type": "application/json"},
                                      body if method == "POST" else b"")
            assert status == 401 and "Bearer" in headers["www-authenticate"], (method, path, auth)
        status, _, _ = _raw(srv.port, method, path, {**host, "Authorization": f"Bearer {TOKEN}",
                                                     "Content-Type": "application/json"},
                            body if method == "POST" else b"")
        assert status == 200, (method, path)
    # a person who opens the page without it is told how to get in
    status, headers, page = _raw(srv.port, "GET", "/", host)
    assert status == 401 and headers["content-type"].startswith("text/html")
    assert b"fastscp status --browser-url" in page and TOKEN.encode() not in page
    for path in ("/metrics", "/healthz"):  # open for scrapers, by choice (docs/security.md)
        status, _, _ = _raw(srv.port, "GET", path, {"Host": "scraper.example:9"})
        assert status == 200, path


def test_dashboard_token_once_in_the_url_becomes_a_strict_cookie(live) -> None:  # type: ignore[no-untyped-def]
    srv = live[0]
    host = {"Host": f"localhost:{srv.port}"}
    status, headers, _ = _raw(srv.port, "GET", f"/?token={TOKEN}", host)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"fastscp-token-{srv.port}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, body = _raw(srv.port, "GET", "/status", {**host, "Cookie": cookie.split(";")[0]})
    assert status == 200 and "totals" in json.loads(body)
    status, _, _ = _raw(srv.port, "GET", "/?token=wrong", host)
    assert status == 401


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("[::1]:{port}", True), ("LOCALHOST", True),
    ("10.1.2.3:{port}", True), ("pacs.example:{port}", True),  # in status.allowed_hosts
    ("evil.example:{port}", False), ("127.0.0.1.evil.example", False), ("localhost.evil.example:{port}", False),
    ("", False),
])
def test_host_header_guards_against_dns_rebinding(tmp_path: Path, host: str, ok: bool) -> None:
    srv = LiveStatus(tmp_path, allowed_hosts=("pacs.example",))
    try:
        status, _, body = _raw(srv.port, "GET", "/status", {"Host": host.format(port=srv.port),
                                                            "Authorization": f"Bearer {TOKEN}"})
        assert (status == 200) == ok, (host, status, body)
        if not ok:
            assert status == 403 and json.loads(body)["kind"] == "host"
    finally:
        srv.close()


@pytest.mark.parametrize("extra, status_wanted", [
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "http://127.0.0.1:1"}, 403),  # another port is another origin
    ({"Origin": "null"}, 403),
    ({"Sec-Fetch-Site": "cross-site"}, 403),
    ({"Sec-Fetch-Site": "same-site"}, 403),
    ({"Content-Type": "text/plain"}, 415),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ({"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}, 200),
    ({}, 200),
])
def test_cross_site_and_non_json_posts_are_refused(live, extra: dict[str, str], status_wanted: int) -> None:  # type: ignore[no-untyped-def]
    srv = live[0]
    headers = {"Host": f"127.0.0.1:{srv.port}", "Cookie": f"fastscp-token-{srv.port}={TOKEN}",
               "Content-Type": "application/json", **{k: v.format(port=srv.port) for k, v in extra.items()}}
    before = srv.server.queries["run"]
    status, _, body = _raw(srv.port, "POST", "/query", headers, b'{"sql": "SELECT 42"}')
    assert status == status_wanted, body
    assert srv.server.queries["run"] == before + (1 if status_wanted == 200 else 0)


def test_generated_token_is_kept_private_and_stable(tmp_path: Path) -> None:
    first = status_token(None, True, tmp_path)
    path = token_path(tmp_path)
    assert first and len(first) >= 32 and path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert status_token(None, True, tmp_path) == first  # kept across restarts
    path.chmod(0o644)
    assert status_token(None, True, tmp_path) == first and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert status_token("configured", True, tmp_path) == "configured"
    assert status_token(None, False, tmp_path) is None


# ---- what a query may take: time, bytes, its client, the slots ---------------------------

LONG = "SELECT sum(a.range * b.range) FROM range(1000000) a, range(1000000) b"


def test_a_long_cross_join_is_interrupted_at_the_time_limit(tmp_path: Path) -> None:
    srv = LiveStatus(tmp_path, limits=QueryLimits(timeout=1.0))
    try:
        t0 = time.monotonic()
        status, doc = srv.query(LONG)
        took = time.monotonic() - t0
        assert status == 422 and doc["kind"] == "timeout" and "status.query_timeout" in doc["error"], doc
        assert took < 10, took
        assert srv.query("SELECT 1")[1]["rows"] == [[1]]  # the slot is free again
        assert srv.server.queries["timeout"] == 1 and srv.server.queries_running == 0
    finally:
        srv.close()


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_a_big_result_is_capped_with_a_clear_error(tmp_path: Path, fmt: str) -> None:
    srv = LiveStatus(tmp_path, limits=QueryLimits(max_bytes=200_000))
    try:
        # random text: no encoding compresses it under the cap
        status, doc = srv.query("SELECT md5(range::VARCHAR) || md5((range * 7)::VARCHAR) AS h FROM range(200000)",
                                format=fmt)
        assert status == 422 and doc["kind"] == "too_large", doc
        assert "200000 bytes" in doc["error"] and "status.query_max_bytes" in doc["error"]
        status, small = srv.query("SELECT range FROM range(10)", format=fmt)
        assert status == 200 and (small["rows"] == [[i] for i in range(10)] if fmt == "json"
                                  else small[:4] == b"PAR1")
        # the Parquet answers' private files are gone, and so is their directory
        assert not (tmp_path / "index.db.export").exists()
    finally:
        srv.close()


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_every_cli_format_through_the_server_is_capped(tmp_path: Path, fmt: str) -> None:
    srv = LiveStatus(tmp_path, limits=QueryLimits(max_bytes=100_000))
    try:
        out = tmp_path / "out"
        r = subprocess.run([sys.executable, "-m", "fastscp.cli", "query",
                            "SELECT md5(range::VARCHAR) AS h FROM range(100000)", "--format", fmt,
                            "--output", str(out), "--url", srv.url, "--token", TOKEN],
                           check=False, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "larger than 100000 bytes" in r.stderr, r.stderr
        assert not out.exists() or out.stat().st_size == 0
    finally:
        srv.close()


def _long_query_running(srv: LiveStatus) -> socket.socket:
    """Post LONG on a raw socket and return it once the query runs."""
    body = json.dumps({"sql": LONG}).encode()
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(f"POST /query HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 20
    while srv.server.queries_running == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return s


def _until_no_query_runs(srv: LiveStatus, since: float, what: str) -> None:
    """Wait until no query runs, failing with ``what`` 60 s after ``since``:
    the bound tells a cancel from the 120 s timeout, not how fast the cancel
    is (it failed once at 10 s with the machine three times loaded)."""
    while srv.server.queries_running:
        assert time.monotonic() - since < 60, what
        time.sleep(0.02)


def test_a_query_whose_client_goes_away_is_cancelled(tmp_path: Path) -> None:
    srv = LiveStatus(tmp_path, limits=QueryLimits(timeout=120.0))
    try:
        s = _long_query_running(srv)
        t0 = time.monotonic()
        s.close()
        _until_no_query_runs(srv, t0, "the query kept running after its client left")
        assert srv.server.queries["client_gone"] == 1
    finally:
        srv.close()


def test_a_client_gone_before_its_statement_starts_still_stops_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB forgets an interrupt that comes before a statement starts: the
    client leaves while the query is still being checked, and the statement
    that starts afterwards must be stopped all the same."""
    import fastscp.monitor.http as status_http

    stopped = threading.Event()
    checked = status_http.check_readonly

    def check_after_the_stop(cur: duckdb.DuckDBPyConnection, sql: str) -> str:
        assert stopped.wait(30)
        return checked(cur, sql)

    monkeypatch.setattr(status_http, "check_readonly", check_after_the_stop)
    srv = LiveStatus(tmp_path, limits=QueryLimits(timeout=120.0))
    try:
        s = _long_query_running(srv)
        deadline = time.monotonic() + 20
        s.close()
        while not any(job.reason == "client_gone" for job in srv.server._jobs):  # the stop, before the statement
            assert time.monotonic() < deadline
            time.sleep(0.02)
        stopped.set()
        _until_no_query_runs(srv, time.monotonic(), "the statement that began after the stop ran on")
        assert srv.server.queries["client_gone"] == 1
    finally:
        stopped.set()
        srv.close()


def test_more_queries_than_slots_are_refused_not_queued(tmp_path: Path) -> None:
    srv = LiveStatus(tmp_path, limits=QueryLimits(timeout=60.0, concurrent=2))
    results: list[tuple[int, object]] = []
    threads = [threading.Thread(target=lambda: results.append(srv.query(LONG))) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while srv.server.queries_running < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, doc = srv.query("SELECT 1")
        assert status == 503 and doc["kind"] == "busy", doc
        t0 = time.monotonic()
        status, _, _ = srv.request("/trend")  # the trend has its own thread
        # a trend queued behind the two would wait until they are closed below
        assert status == 200 and time.monotonic() - t0 < 30
        assert srv.request("/status")[0] == 200
    finally:
        srv.call(srv.server.close())  # interrupts the two: the threads end
        for t in threads:
            t.join(20)
        srv.close()
    assert [s for s, _ in results] == [503, 503]
