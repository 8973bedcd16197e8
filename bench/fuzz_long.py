"""The long fuzz run (issue 9). CI runs the short one (tests/test_fuzz_*.py).

    .venv/bin/pip install atheris            # optional: coverage-guided
    .venv/bin/python bench/fuzz_long.py --seconds 3600            # every target in turn
    .venv/bin/python bench/fuzz_long.py --target command --seconds 600
    .venv/bin/python bench/fuzz_long.py --hypothesis --examples 200000

With atheris (libFuzzer, coverage of the Python and Cython code), each
target gets --seconds / len(targets) seconds, starting from the inputs in
tests/fuzz_corpus/. Without atheris (or with --hypothesis) the property
tests in tests/test_fuzz_protocol.py, tests/test_association.py and
tests/test_framer.py run with FUZZ_EXAMPLES scaled up.

Targets (same invariants as the tests: a valid result or the documented
error, never anything else):
  stream   the association state machine fed a byte stream (framer, PDU
           decoders, command decoder, state table), cut in 7-byte reads
  command  decode_command (DIMSE command sets)
  rq       decode_associate_rq
  dataset  check_dataset_end + parse_head over a received data set

A crasher is written to tests/fuzz_corpus/crash-<target>-<sha1>.bin; keep
it there (test_fuzz_protocol.py replays every file in that folder).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fuzz_corpus"
sys.path.insert(0, str(ROOT / "tests"))


def target_stream(data: bytes) -> None:
    from test_association import drive

    drive(data, list(range(7, len(data), 7)))


def target_command(data: bytes) -> None:
    from fastscp._ext.framer import decode_command

    try:
        decode_command(data)
    except ValueError:
        pass


def target_rq(data: bytes) -> None:
    from fastscp.protocol import pdu as P

    try:
        P.decode_associate_rq(data)
    except P.PDUError:
        pass


def target_dataset(data: bytes) -> None:
    from fastscp.storage.header import MalformedDataset, check_dataset_end, parse_head

    for syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
        try:
            check_dataset_end(data[:256], len(data), syntax, lambda off, n: data[off:off + n])
        except MalformedDataset:
            pass
        try:
            parse_head(data, syntax, True)
        except MalformedDataset:
            pass


TARGETS = {"stream": target_stream, "command": target_command, "rq": target_rq, "dataset": target_dataset}


def keep_crasher(name: str, data: bytes) -> Path:
    path = CORPUS / f"crash-{name}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
    path.write_bytes(data)
    return path


def run_atheris(name: str, seconds: int) -> int:
    """One target in a child process (libFuzzer exits on the first crash)."""
    code = f"""
import sys, atheris
sys.path.insert(0, {str(ROOT / 'bench')!r})
with atheris.instrument_imports():
    import fastscp._ext.framer, fastscp.protocol.association, fastscp.protocol.pdu, fastscp.storage.header
import fuzz_long
target = fuzz_long.TARGETS[{name!r}]
def one(data):
    try:
        target(data)
    except Exception:
        fuzz_long.keep_crasher({name!r}, data)
        raise
atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""
    work = Path(os.environ.get("FUZZ_WORK", "/tmp/fastscp-fuzz")) / name  # libFuzzer's growing corpus
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", code, f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-timeout=10",
           f"-artifact_prefix={work}/", str(work), str(CORPUS)]
    print(f"== atheris {name}: {seconds} s", flush=True)
    return subprocess.call(cmd)


def run_hypothesis(examples: int) -> int:
    env = {**os.environ, "FUZZ_EXAMPLES": str(max(1, examples // 500))}
    tests = ["tests/test_fuzz_protocol.py", "tests/test_association.py", "tests/test_framer.py",
             "tests/test_header_fuzz.py"]
    print(f"== hypothesis, FUZZ_EXAMPLES={env['FUZZ_EXAMPLES']}", flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "-k", "fuzz or random or mutated", *tests], cwd=ROOT, env=env)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=sorted(TARGETS), action="append")
    p.add_argument("--seconds", type=int, default=600)
    p.add_argument("--hypothesis", action="store_true", help="property tests even if atheris is installed")
    p.add_argument("--examples", type=int, default=100_000, help="hypothesis: roughly the examples per property")
    args = p.parse_args()
    try:
        import atheris  # noqa: F401
    except ImportError:
        atheris_ok = False
    else:
        atheris_ok = not args.hypothesis
    if not atheris_ok:
        return run_hypothesis(args.examples)
    names = args.target or list(TARGETS)
    start = time.monotonic()
    worst = 0
    for name in names:
        worst = max(worst, run_atheris(name, max(10, args.seconds // len(names))))
    print(f"done in {time.monotonic() - start:.0f} s, exit {worst}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
