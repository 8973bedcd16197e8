"""The status endpoint's defences against a real ``fastscp serve``: a page on
another origin in real Chromium cannot run a query (nor reach it by a
rebound name); a long query leaves C-ECHO answered (dcmtk echoscu) and does
not keep SIGTERM from ending the process; and the newcomer's CLI paths
(stats through the server, reindex refused, status says which server, query
errors show the user's SQL)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import dcmtk, free_port, make_image
from test_dashboard_browser import browser

pytestmark = pytest.mark.interop

LONG = "SELECT sum(a.range * b.range) FROM range(1000000) a, range(1000000) b"


def token_of(srv: Any) -> str:
    """The server's generated token, once its status endpoint listens (it
    logs "status page at" then)."""
    assert "status page at" in srv.log_once_it_says("status page at")
    return str((srv.storage / ".status" / "token").read_text().strip())


def status(sport: int, token: str) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{sport}/status", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.load(resp))


def fastscp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastscp.cli", *args], check=False, capture_output=True, text=True,
                          timeout=120)


ATTACK = """<!doctype html><html><body><div id="out">running</div>
<iframe name="sink" style="display:none"></iframe>
<form id="f" method="POST" action="TARGET/query" enctype="text/plain" target="sink">
<input name='{"sql": "SELECT 1 AS x", "pad": "' value='"}'></form>
<script>
const out = [];
async function attempt(name, init) {
  try { const r = await fetch("TARGET/query", init); out.push(name + ":" + r.status + ":" + (await r.text()).slice(0, 80)); }
  catch (e) { out.push(name + ":blocked"); }
}
(async () => {
  const body = JSON.stringify({sql: "SELECT 42 AS stolen"});
  await attempt("no-cors-text", {method: "POST", mode: "no-cors", credentials: "include",
                                 headers: {"Content-Type": "text/plain"}, body});
  await attempt("cors-json", {method: "POST", credentials: "include",
                              headers: {"Content-Type": "application/json"}, body});
  await attempt("get-status", {credentials: "include"});
  document.getElementById("f").submit();
  setTimeout(() => { document.getElementById("out").textContent = "done " + out.join(" | "); }, 1500);
})();
</script></body></html>"""


def test_a_page_on_another_origin_cannot_run_a_query(start_server, tmp_path: Path,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sport = free_port()
    srv = start_server("--status-port", str(sport))
    token = token_of(srv)
    target = f"http://127.0.0.1:{sport}"
    page = ATTACK.replace("TARGET", target).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    driver = browser(tmp_path / "chromium-profile", tmp_path_factory.mktemp("chromium"))
    try:
        # the victim has opened the dashboard before: the browser holds its cookie
        driver.get(f"{target}/?token={token}")
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "cards"))
        before = status(sport, token)["queries"]["run"]
        # then visits another origin on the same machine (same site, so even
        # a SameSite=Strict cookie goes along)
        driver.get(f"http://127.0.0.1:{evil.server_address[1]}/")
        text = WebDriverWait(driver, 30).until(
            lambda d: (t := d.find_element(By.ID, "out").text).startswith("done") and t)
        assert "42" not in text and "stolen" not in text, text
        assert "cors-json:blocked" in text and "get-status:blocked" in text, text
        # a rebound name: evil.test resolves to this host, the Host header gives it away
        driver.get(f"http://127.0.0.1:{sport}/")  # (cookie still set for 127.0.0.1)
        after = status(sport, token)["queries"]["run"]
        assert after == before, "a cross-origin request ran a query"
    finally:
        driver.quit()
        evil.shutdown()
        evil.server_close()
    log = srv.log_text()
    assert "Traceback" not in log


def test_a_rebound_host_name_is_refused_in_chromium(start_server, tmp_path: Path,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    from selenium import webdriver  # noqa: F401
    from selenium.webdriver.common.by import By

    sport = free_port()
    srv = start_server("--status-port", str(sport))
    token = token_of(srv)
    import test_dashboard_browser as tdb

    flags = tdb.FLAGS
    tdb.FLAGS = (*flags, "--host-resolver-rules=MAP rebound.test 127.0.0.1")
    try:
        driver = browser(tmp_path / "chromium-profile", tmp_path_factory.mktemp("chromium"))
    finally:
        tdb.FLAGS = flags
    try:
        driver.get(f"http://rebound.test:{sport}/status?token={token}")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "is not this server's" in body and "totals" not in body, body
        driver.get(f"http://127.0.0.1:{sport}/status?token={token}")
        assert "totals" in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()


def test_echo_answered_while_a_query_runs_and_sigterm_ends_it(start_server, tmp_path: Path) -> None:
    sport = free_port()
    config = tmp_path / "long.yaml"
    config.write_text("status:\n  query_timeout: 600\n")
    srv = start_server("--config", str(config), "--status-port", str(sport))
    token = token_of(srv)
    answers: list[int] = []

    def long_query() -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{sport}/query", data=json.dumps({"sql": LONG}).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=120)
            answers.append(200)
        except urllib.error.HTTPError as exc:
            answers.append(exc.code)
        except OSError:
            answers.append(-1)

    t = threading.Thread(target=long_query)
    t.start()
    deadline = time.monotonic() + 20
    while status(sport, token)["queries"]["running"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(3):
        t0 = time.monotonic()
        r = subprocess.run([dcmtk("echoscu"), "-aec", "FASTSCP", "-to", "5", "127.0.0.1", str(srv.port)],
                           check=False, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert time.monotonic() - t0 < 3
    assert status(sport, token)["queries"]["running"] == 1  # it was running all along
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(timeout=30)
    assert time.monotonic() - t0 < 10 + 5  # shutdown_grace 10 s, and it has no association to wait for
    t.join(30)
    assert answers and answers[0] != 200
    assert "stopped:" in srv.log_text()


def test_stats_goes_through_the_running_server(start_server, tmp_path: Path) -> None:
    sport = free_port()
    srv = start_server("--status-port", str(sport))
    token_of(srv)  # its endpoint listens, and its discovery file is written
    files = []
    for i in range(6):
        p = tmp_path / f"s{i}.dcm"
        make_image(p, i, study=i % 2, modality="CT")
        files.append(str(p))
    subprocess.run([dcmtk("storescu"), "-aec", "FASTSCP", "127.0.0.1", str(srv.port), *files], check=True,
                   capture_output=True, timeout=60)
    deadline = time.monotonic() + 20
    while True:
        r = fastscp("stats", "--index-db", str(srv.index_db), "--format", "json", "--storage-dir", str(srv.storage))
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)[0]
        if doc["instances"] == 6:
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)
    assert doc["studies"] == 2 and doc["per_modality"][0][:2] == ["CT", 6] and doc["disk_total"] > 0
    r = fastscp("stats", "--index-db", str(srv.index_db))
    assert r.returncode == 0 and "instances    6" in r.stdout, r.stderr
    # reindex writes: refused while the server holds the index, in one line
    r = fastscp("reindex", "--storage-dir", str(srv.storage), "--index-db", str(srv.index_db))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "held by a running fastscp server" in r.stderr
    assert "stop it first" in r.stderr and "IO Error" not in r.stderr
    # status says which server it shows, and where that came from
    r = fastscp("status", "--once", "--index-db", str(srv.index_db))
    assert r.returncode == 0 and f"showing the server at http://127.0.0.1:{sport}" in r.stderr
    assert "discovery file" in r.stderr
    r = fastscp("status", "--browser-url", "--index-db", str(srv.index_db))
    assert r.returncode == 0 and r.stdout == f"http://127.0.0.1:{sport}/?token={token_of(srv)}\n"
    # a query error names the user's SQL, not the plan-check wrapper
    r = fastscp("query", "SELECT nosuch FROM instances", "--index-db", str(srv.index_db))
    assert r.returncode == 1 and "nosuch" in r.stderr and "EXPLAIN" not in r.stderr, r.stderr
    assert "LINE 1: SELECT nosuch FROM instances" in r.stderr
    srv.stop()
    # and without a server: the same answers from the file
    r = fastscp("stats", "--index-db", str(srv.index_db), "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["instances"] == 6
    r = fastscp("query", "SELECT * FORM instances", "--index-db", str(srv.index_db))
    assert r.returncode == 1 and "EXPLAIN" not in r.stderr and "LINE 1: SELECT * FORM instances" in r.stderr


def test_status_says_it_fell_back_to_the_default_address(tmp_path: Path) -> None:
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "fastscp.cli", "status", "--once", "--index-db",
                        str(tmp_path / "mine.db")], check=False, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "FASTSCP_STATUS_URL": f"http://127.0.0.1:{port}"})
    assert r.returncode == 1
    assert f"http://127.0.0.1:{port}" in r.stderr and "$FASTSCP_STATUS_URL" in r.stderr
    assert f"no server found for index {tmp_path / 'mine.db'}" in r.stderr
