"""Static checks on the package: ``mypy --strict`` and ``ruff check`` are clean, and every
``# type: ignore`` names its error code and gives its reason on the same line.

The tools run from the repository root exactly as a developer would run them, with the
configuration in pyproject.toml ([tool.mypy], [tool.ruff]) and the versions pinned in the
``test`` extras (checked below, so that CI cannot silently run another release).

NOT_YET_CLEAN is the ratchet: files being redesigned by issue 21 that still have findings.
The tools still check them (mypy needs their types anyway); their findings are only not
counted. Remove a file's entry once it is clean: the last test fails while a listed file
has no finding left, so the list can only shrink.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fastscp"

NOT_YET_CLEAN: list[str] = []

_MYPY_LINE = re.compile(r"^(?P<path>[^:\s]+\.pyi?):\d+: (?P<kind>error|note): ")
_RUFF_LINE = re.compile(r"^(?P<path>[^:\s]+\.pyi?):\d+:\d+: [A-Z]+\d+ ")
# "# type: ignore[code, ...]" followed by "  # reason" with some text
_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<rest>.*)$")
_IGNORE_WITH_REASON = re.compile(r"^\[[a-z][a-z-]*(,\s*[a-z][a-z-]*)*\]\s+#\s*\S")


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _by_file(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        out.setdefault(line.split(":", 1)[0], []).append(line)
    return out


def _counted(findings: dict[str, list[str]]) -> list[str]:
    return [line for path, lines in sorted(findings.items()) if path not in NOT_YET_CLEAN for line in lines]


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    cache = tmp_path_factory.mktemp("mypy_cache")
    result = _tool("mypy", "--strict", "--cache-dir", str(cache), "--no-error-summary", "--no-pretty", PACKAGE)
    # 0: clean, 1: errors found; anything else (2: crash, bad config) is a failure of the check itself
    assert result.returncode in (0, 1), result.stdout + result.stderr
    errors = []
    for line in result.stdout.splitlines():
        m = _MYPY_LINE.match(line)
        assert m is not None or not line.strip(), f"unparsed mypy output: {line!r}"
        if m is not None and m["kind"] == "error":
            errors.append(line)
    assert (result.returncode == 1) == bool(errors), result.stdout
    return _by_file(errors)


@pytest.fixture(scope="module")
def ruff_findings() -> dict[str, list[str]]:
    result = _tool("ruff", "check", "--no-cache", "--output-format", "concise", "--quiet", PACKAGE)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    findings = [line for line in result.stdout.splitlines() if line.strip()]
    for line in findings:
        assert _RUFF_LINE.match(line), f"unparsed ruff output: {line!r}"
    assert (result.returncode == 1) == bool(findings), result.stdout
    return _by_file(findings)


@pytest.fixture(scope="module")
def bare_ignores() -> dict[str, list[str]]:
    found = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = _IGNORE.search(line)
            if m is not None and not _IGNORE_WITH_REASON.match(m["rest"].strip()):
                found.append(f"{rel}:{number}: {line.strip()}")
    return _by_file(found)


def test_the_checkers_are_the_pinned_versions() -> None:
    # the exact pins ("name==version"; only the test extras pin exactly)
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', (ROOT / "pyproject.toml").read_text()))
    assert {"mypy", "ruff"} <= pins.keys()
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, f"{name}: installed != pinned (pip install -e '.[test]')"


def test_mypy_strict_is_clean(mypy_errors: dict[str, list[str]]) -> None:
    assert _counted(mypy_errors) == []


def test_ruff_is_clean(ruff_findings: dict[str, list[str]]) -> None:
    assert _counted(ruff_findings) == []


def test_bench_scripts_are_ruff_clean() -> None:
    """bench/ is not the package, but its scripts are the project's figures: ruff checks
    them with the same configuration (mypy does not: they are scripts, not typed API)."""
    result = _tool("ruff", "check", "--no-cache", "--output-format", "concise", "--quiet", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_type_ignore_names_its_code_and_reason(bare_ignores: dict[str, list[str]]) -> None:
    assert _counted(bare_ignores) == []


def test_reason_pattern() -> None:
    """The ignore check itself: what it accepts and what it refuses."""
    def ok(line: str) -> bool:
        m = _IGNORE.search(line)
        return m is not None and _IGNORE_WITH_REASON.match(m["rest"].strip()) is not None

    assert ok("x = f()  # type: ignore[attr-defined]  # the library makes its names at import")
    assert ok("x = f()  # type: ignore[arg-type, index]  # why")
    assert not ok("x = f()  # type: ignore")
    assert not ok("x = f()  # type: ignore[arg-type]")
    assert not ok("x = f()  # type: ignore  # a reason but no code")


def test_not_yet_clean_lists_only_files_with_findings(mypy_errors: dict[str, list[str]],
                                                       ruff_findings: dict[str, list[str]],
                                                       bare_ignores: dict[str, list[str]]) -> None:
    for path in NOT_YET_CLEAN:
        assert (ROOT / path).is_file(), f"{path} is in NOT_YET_CLEAN but does not exist"
    clean = [p for p in NOT_YET_CLEAN if p not in mypy_errors and p not in ruff_findings and p not in bare_ignores]
    assert clean == [], f"now clean: remove from NOT_YET_CLEAN in {Path(__file__).name}"
