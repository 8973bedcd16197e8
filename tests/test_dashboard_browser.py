"""The dashboard in a real headless browser (Debian chromium + chromedriver,
driven by selenium): it loads with no console errors, shows an active
association and draws the throughput graph and the storage-trend chart from
the catalog. A screenshot is saved under the test's tmp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import dcmtk, free_port, make_image

pytestmark = pytest.mark.interop

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1400,1500")


def browser(profile: Path, tmpdir: Path):  # type: ignore[no-untyped-def]
    """Chromium under chromedriver, leaving nothing in /tmp: its profile is
    ``profile`` and its TMPDIR ``tmpdir`` (chromium puts an
    org.chromium.Chromium.* folder with its singleton socket in TMPDIR and
    does not remove it when chromedriver ends it). A socket path must fit in
    108 bytes: ``tmpdir`` must be short, or chromium exits at start."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: apt-get install -y {package} (.ci/run installs it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=opts)


def test_dashboard_in_headless_chromium(start_server, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sport = free_port()
    srv = start_server("--status-port", str(sport))
    files = []
    for i in range(24):
        p = tmp_path / f"img{i}.dcm"
        make_image(p, i, study=i % 3, modality=("CT", "MR")[i % 2], series=1 + i % 2)
        files.append(str(p))
    subprocess.run([dcmtk("storescu"), "-aet", "FLOODER", "-aec", "FASTSCP", "127.0.0.1", str(srv.port), *files],
                   check=True, capture_output=True, timeout=60)
    # the rows are in the index before the page first asks for the trend
    deadline = time.monotonic() + 20
    while True:
        r = subprocess.run([sys.executable, "-m", "fastscp.cli", "query", "SELECT count(*) AS n FROM instances",
                            "--index-db", str(srv.index_db), "--format", "json"], capture_output=True, text=True)
        if r.returncode == 0 and json.loads(r.stdout)[0]["n"] == 24:
            break
        assert time.monotonic() < deadline, r.stderr
        time.sleep(0.3)

    # an association held open while the browser looks (a real pynetdicom peer)
    ae = AE(ae_title="WATCHED")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", srv.port, ae_title="FASTSCP")
    assert assoc.is_established
    driver = browser(tmp_path / "chromium-profile", tmp_path_factory.mktemp("chromium"))
    try:
        # opened once with the token (as the start-up log says); the page
        # then lives on its cookie, with the token gone from the address
        token = (srv.storage / ".status" / "token").read_text().strip()
        driver.get(f"http://127.0.0.1:{sport}/?token={token}")
        assert "token" not in driver.current_url
        wait = WebDriverWait(driver, 20)
        row = wait.until(lambda d: [tr for tr in d.find_elements(By.CSS_SELECTOR, "#active tbody tr[data-id]")
                                    if "WATCHED" in tr.text])
        assert "FASTSCP" in row[0].text and "127.0.0.1:" in row[0].text
        bars = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#trend-svg rect.bar"))
        titles = " ".join(b.find_element(By.TAG_NAME, "title").get_attribute("textContent") for b in bars)
        assert "CT: 12 instances, " in titles and "MR: 12 instances, " in titles
        legend = driver.find_element(By.ID, "trend-legend").text
        assert "CT" in legend and "MR" in legend and "bytes per day" in legend
        # the throughput graph gets its lines once the sampler has a few seconds of history
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#throughput-chart path.series"))
        studies = driver.find_element(By.CSS_SELECTOR, "#studies tbody").text
        assert "P000" in studies and "FLOODER" in studies
        cards = driver.find_element(By.ID, "cards").text
        assert "24" in cards and "storage free" in cards
        assert "live" in driver.find_element(By.ID, "conn").text
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        print(f"dashboard screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        logs = driver.get_log("browser")
        errors = [e for e in logs if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
    finally:
        driver.quit()
        assoc.release()
