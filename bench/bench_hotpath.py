"""Hot-path micro-benchmark: the receive path fed from memory, no network.

A benchmark corpus (bench/gen_corpus.py) is turned into the exact byte
stream a sender puts on the wire (A-ASSOCIATE-RQ, then per instance a
C-STORE-RQ command PDU and the dataset in P-DATA PDUs of at most --max-pdu
bytes, then A-RELEASE-RQ), held in memory. That stream is fed to fastscp's
real connection object (net/server.py ``AssociationProtocol``) the way the
event loop does it: ``get_buffer`` / copy / ``buffer_updated``, in reads of
at most --read-size bytes. Everything behind it is the real receive path:
framer, association state machine, DIMSE, temp file, header parse, naming,
duplicate check, rename, C-STORE-RSP encoding. Answers go to a transport
that only counts them. The observers are left out unless --observers is
given; then ``serve``'s are told of every instance, in its order: the
pipeline (scan sheets, with its thread), the index writer (DuckDB, with its
thread), the monitor and the connection log.

Reported: instances/s, dataset GB/s, CPU seconds of this process, and that
every instance got a Success answer and is stored. Use it to judge a change
to ``_ext/`` or the storage path without the noise of a sender process:

    python bench/bench_hotpath.py --corpus small --count 5000
    python bench/bench_hotpath.py --corpus large --count 1000 --profile out.prof

With --floor, each repeat also feeds the same stream to bench/pyfloor.py's
protocol (the least Python a receiver can run per instance: write, rename,
answer), right after fastscp's run, and the ratio of the two best times is
printed: fastscp's receive path against a floor measured in the same run.
With --lane, each repeat also feeds bench/lane.py: fastscp's own storage
work (temp file, writes, hash, header parse and checks, naming, duplicate
check, rename, answer) called straight from the read callback, without the
state table, dispatcher, service and durability layers. fastscp against
the lane is what those layers cost; the lane against pyfloor is what the
storage work's own Python costs.

With --cold-mb N, N MB are written over before each read, so each read
meets caches as cold as a flood leaves them (between two instances the
sender and the kernel run), and the times given are those spent inside
the receive callback (the eviction itself left out).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import resource
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_corpus

from fastscp.app import build_state
from fastscp.config import load_config
from fastscp.net.server import DicomServer
from fastscp.protocol import dimse as D
from fastscp.services.dispatcher import Dispatcher

AE = "FASTSCP"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _item(t: int, value: bytes) -> bytes:
    return struct.pack(">BBH", t, 0, len(value)) + value


def associate_rq(contexts: list[tuple[int, str, str]], max_pdu: int) -> bytes:
    body = struct.pack(">HH", 1, 0) + AE.encode().ljust(16) + b"BENCH".ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for cid, abstract, ts in contexts:
        body += _item(0x20, bytes((cid, 0, 0, 0)) + _item(0x30, abstract.encode()) + _item(0x40, ts.encode()))
    body += _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.3.4"))
    return struct.pack(">BBI", 1, 0, len(body)) + body


def pdata_pdus(context_id: int, payload: bytes | memoryview, command: bool, max_pdu: int) -> list[bytes]:
    """One message as P-DATA-TF PDUs of at most max_pdu bytes, one PDV each."""
    room = max_pdu - 6
    out = []
    for start in range(0, max(len(payload), 1), room):
        chunk = payload[start:start + room]
        last = start + room >= len(payload)
        mch = (1 if command else 0) | (2 if last else 0)
        out.append(struct.pack(">BBIIBB", 4, 0, len(chunk) + 6, len(chunk) + 2, context_id, mch) + bytes(chunk))
    return out


def dataset_of(path: Path) -> tuple[str, str, str, bytes]:
    """(SOP class, SOP instance, transfer syntax, dataset bytes) of a Part-10 file."""
    raw = path.read_bytes()
    meta_len = int.from_bytes(raw[140:144], "little")
    meta = raw[132:144 + meta_len]
    values: dict[int, str] = {}
    pos = 12
    while pos < len(meta):
        elem = struct.unpack_from("<H", meta, pos + 2)[0]
        vr = meta[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            length = struct.unpack_from("<I", meta, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", meta, pos + 6)[0]
            start = pos + 8
        values[elem] = meta[start:start + length].rstrip(b"\0 ").decode()
        pos = start + length
    return values[0x0002], values[0x0003], values[0x0010], raw[144 + meta_len:]


def build_stream(files: list[Path], max_pdu: int) -> tuple[bytes, int, int]:
    """The whole association as one byte string; (stream, instances, dataset bytes)."""
    parsed = [dataset_of(p) for p in files]
    contexts: dict[tuple[str, str], int] = {}
    for sop_class, _, ts, _ in parsed:
        contexts.setdefault((sop_class, ts), 1 + 2 * len(contexts))
    parts = [associate_rq([(cid, a, t) for (a, t), cid in contexts.items()], max_pdu)]
    total = 0
    for n, (sop_class, sop_instance, ts, data) in enumerate(parsed, 1):
        cid = contexts[(sop_class, ts)]
        command = D.encode_request(D.C_STORE_RQ, n, sop_class, sop_instance, data_set=True)
        parts += pdata_pdus(cid, command, True, max_pdu)
        parts += pdata_pdus(cid, data, False, max_pdu)
        total += len(data)
    parts.append(bytes((5, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
    return b"".join(parts), len(parsed), total


class CountingTransport:
    """Stands in for the socket: counts C-STORE-RSP statuses it is given."""

    def __init__(self) -> None:
        self.success = 0
        self.other = 0
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def write(self, data: bytes) -> None:
        # walk the PDUs; a C-STORE-RSP's Status (0000,0900) is its command's last US
        pos = 0
        while pos + 6 <= len(data):
            end = pos + 6 + int.from_bytes(data[pos + 2:pos + 6], "big")
            if data[pos] == 4:
                idx = data.rfind(b"\x00\x00\x00\x09\x02\x00\x00\x00", pos, end)
                if idx >= 0:
                    if data[idx + 8:idx + 10] == b"\x00\x00":
                        self.success += 1
                    else:
                        self.other += 1
            pos = end

    def writelines(self, pieces: list[bytes | bytearray]) -> None:
        self.write(b"".join(pieces))  # the pieces may split a PDU

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _StubSocket:
    """What pyfloor's ``connection_made`` asks of the transport's socket."""

    def setsockopt(self, *args: object) -> None:
        pass

    def fileno(self) -> int:
        return -1


class FloorTransport(CountingTransport):
    def get_extra_info(self, name: str, default: object = None) -> object:
        return _StubSocket() if name == "socket" else default


# --cold-mb: a buffer written over before each read, and what it is written with
_COLD: list[tuple[bytearray, bytes]] = []


def pump(proto: asyncio.BufferedProtocol, stream: bytes, read_size: int) -> tuple[float, float] | None:
    """Feed ``stream`` to ``proto`` as the event loop does: get_buffer, copy, buffer_updated.
    With --cold-mb, the caches are flushed before each read (the buffer
    written over) and the seconds spent inside ``buffer_updated`` are
    returned, (wall, CPU of this thread); else None."""
    view = memoryview(stream)
    pos, end = 0, len(stream)
    cold = _COLD[0] if _COLD else None
    inside_ns = inside_cpu_ns = 0
    while pos < end:
        buf = proto.get_buffer(-1)
        n = min(len(buf), read_size, end - pos)
        buf[:n] = view[pos:pos + n]
        pos += n
        if cold is None:
            proto.buffer_updated(n)
            continue
        cold[0][:] = cold[1]
        t, c = time.perf_counter_ns(), time.thread_time_ns()
        proto.buffer_updated(n)
        inside_ns += time.perf_counter_ns() - t
        inside_cpu_ns += time.thread_time_ns() - c
    return None if cold is None else (inside_ns / 1e9, inside_cpu_ns / 1e9)


def timed_feed(proto: asyncio.BufferedProtocol, transport: CountingTransport, stream: bytes, read_size: int
               ) -> tuple[CountingTransport, float, float]:
    """A reference receiver's run: the connection, then the stream; its
    wall and CPU seconds (with --cold-mb, those inside the callback)."""
    c0, t0 = time.process_time(), time.perf_counter()
    proto.connection_made(transport)  # type: ignore[arg-type]
    inside = pump(proto, stream, read_size)
    if inside is not None:
        return transport, *inside
    return transport, time.perf_counter() - t0, time.process_time() - c0


async def feed_lane(stream: bytes, storage_dir: Path, max_pdu: int, read_size: int
                    ) -> tuple[CountingTransport, float, float]:
    """The same stream through bench/lane.py: fastscp's storage work called
    straight from the read callback (no index, as fastscp's run without
    --observers)."""
    import lane

    cfg = load_config(None, {"storage.directory": str(storage_dir), "server.max_pdu": max_pdu,
                             "database.path": None, "status.port": 0})
    proto = lane.Lane(build_state(cfg), max_pdu)
    transport = CountingTransport()
    gc.collect()
    gc.freeze()  # as feed does
    return timed_feed(proto, transport, stream, read_size)


async def feed_floor(stream: bytes, storage_dir: Path, read_size: int) -> tuple[CountingTransport, float, float]:
    """The same stream through bench/pyfloor.py's protocol (no busy polling)."""
    import pyfloor

    (storage_dir / ".incoming").mkdir(parents=True)
    proto = pyfloor.Floor(str(storage_dir), 0)
    transport = FloorTransport()
    gc.collect()
    return timed_feed(proto, transport, stream, read_size)


async def feed(stream: bytes, storage_dir: Path, max_pdu: int, read_size: int, observers: bool,
               index_db: Path) -> tuple[CountingTransport, float, float]:
    overrides = {"storage.directory": str(storage_dir), "server.max_pdu": max_pdu,
                 "database.path": str(index_db) if observers else None, "status.port": 0}
    cfg = load_config(None, overrides)
    state = build_state(cfg)
    writer = None
    if observers:
        from fastscp.app import CatalogFeed, open_catalog
        from fastscp.catalog.known import fill_filter
        from fastscp.storage.duplicates import IndexedInstances

        writer = open_catalog(cfg, state)
        known = state.storage.guard.index
        if isinstance(known, IndexedInstances):  # as serve's start-up does (catalog/startup.py) before the flood
            conn = writer.cursor()
            try:
                fill_filter(conn, known.filter)
            finally:
                conn.close()
            known.mark_ready()
    server = DicomServer(lambda assoc, link: Dispatcher(state, assoc, link), max_pdu,
                         idle_timeout=0, dimse_timeout=0)
    pipeline = None
    if observers:  # serve's observers, in serve's order (app.py)
        from fastscp.monitor.service import MonitorService
        from fastscp.pipeline.service import Pipeline, PipelineSettings

        pipeline = Pipeline(PipelineSettings.from_config(cfg.hooks, state.storage.directory))
        if pipeline.active:
            state.observers.append(pipeline)
            pipeline.start()
        if writer is not None:
            state.observers.append(CatalogFeed(writer, server))
        MonitorService(cfg, state, state.storage.directory, state.storage.min_free_space, state.observers, writer)
    from fastscp.net.server import AssociationProtocol

    proto = AssociationProtocol(server)
    transport = CountingTransport()
    gc.collect()
    gc.freeze()  # as serve does after start-up
    c0, t0 = time.process_time(), time.perf_counter()
    proto.connection_made(transport)  # type: ignore[arg-type]
    inside = pump(proto, stream, read_size)
    t1, c1 = time.perf_counter(), time.process_time()
    proto.connection_lost(None)
    if pipeline is not None:
        pipeline.close(5.0)
    if writer is not None:
        writer.close()
    if inside is not None:
        return transport, *inside
    return transport, t1 - t0, c1 - c0


def checked_run(name: str, run: int, instances: int, work_dir: Path | None,
                feeder: Callable[[Path], tuple[CountingTransport, float, float]]) -> dict[str, float] | None:
    """One run in a fresh folder: its wall and CPU seconds, or None (and a
    line on stderr) unless every instance was answered Success and stored."""
    work = Path(tempfile.mkdtemp(prefix=f"fastscp-hotpath-{name}-", dir=work_dir))
    try:
        transport, wall, cpu = feeder(work)
        stored = sum(1 for p in (work / "store").rglob("*.dcm"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if transport.success != instances or stored != instances:
        print(f"{name} run {run}: {transport.success} Success answers, {transport.other} others, "
              f"{stored} files stored, of {instances}", file=sys.stderr)
        return None
    return {"wall_s": wall, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="small", choices=["small", "large", "multiframe"])
    ap.add_argument("--count", type=int, default=None, help="images in the corpus (default: gen_corpus's)")
    ap.add_argument("--multiframe-mb", type=int, default=64)
    ap.add_argument("--corpus-dir", type=Path, default=gen_corpus.DEFAULT_ROOT)
    ap.add_argument("--work-dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                    help="where the receiver stores (default tmpfs /dev/shm)")
    ap.add_argument("--max-pdu", type=int, default=131072)
    ap.add_argument("--read-size", type=int, default=262144, help="bytes per simulated socket read")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the best is reported")
    ap.add_argument("--observers", action="store_true",
                    help="also tell serve's observers (pipeline, index writer, monitor, connection log)")
    ap.add_argument("--profile", type=Path, help="write a cProfile of one run here")
    ap.add_argument("--floor", action="store_true",
                    help="also feed bench/pyfloor.py's protocol after each run, and print the ratio")
    ap.add_argument("--lane", action="store_true",
                    help="also feed bench/lane.py (fastscp's storage work without the layers around it)")
    ap.add_argument("--cold-mb", type=int, default=0,
                    help="write over this many MB before each read (caches cold, as between a flood's "
                         "instances, where the sender and the kernel run); times are then those spent "
                         "inside the receive callback")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    corpus = gen_corpus.ensure_corpus(gen_corpus.default_spec(args.corpus, args.count, args.multiframe_mb),
                                      args.corpus_dir)
    stream, instances, dataset_bytes = build_stream(corpus.files, args.max_pdu)
    _COLD.clear()
    if args.cold_mb > 0:
        _COLD.append((bytearray(args.cold_mb << 20), bytes(args.cold_mb << 20)))
    runs: list[dict[str, float]] = []
    # the reference receivers fed the same stream after each of fastscp's
    # runs: key of their figures -> (name in the runs and the output, title, feeder)
    references: dict[str, tuple[str, str, Callable[[Path], tuple[CountingTransport, float, float]]]] = {}
    if args.floor:
        references["floor"] = ("pyfloor", "pyfloor", lambda work: asyncio.run(
            feed_floor(stream, work / "store", args.read_size)))
    if args.lane:
        references["lane"] = ("lane", "lane (the same storage work, no layers)", lambda work: asyncio.run(
            feed_lane(stream, work / "store", args.max_pdu, args.read_size)))
    reference_runs: dict[str, list[dict[str, float]]] = {key: [] for key in references}

    def fastscp_run(work: Path, profile: Path | None) -> tuple[CountingTransport, float, float]:
        coro = feed(stream, work / "store", args.max_pdu, args.read_size, args.observers, work / "index.db")
        if profile is None:
            return asyncio.run(coro)
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            return asyncio.run(coro)
        finally:
            prof.disable()
            prof.dump_stats(profile)

    for run in range(args.repeat):
        one = checked_run("fastscp", run, instances, args.work_dir,
                          functools.partial(fastscp_run, profile=args.profile if run == 0 else None))
        if one is None:
            return 1
        runs.append(one)
        for key, (name, _, feeder) in references.items():
            one = checked_run(name, run, instances, args.work_dir, feeder)
            if one is None:
                return 1
            reference_runs[key].append(one)
    best = min(runs, key=lambda r: r["wall_s"])
    figures = {
        "corpus": corpus.spec.key(), "instances": instances, "dataset_bytes": dataset_bytes,
        "max_pdu": args.max_pdu, "observers": args.observers, "cold_mb": args.cold_mb,
        "wall_s": best["wall_s"], "cpu_s": best["cpu_s"],
        "instances_per_s": instances / best["wall_s"], "dataset_gb_per_s": dataset_bytes / best["wall_s"] / 1e9,
        "us_per_instance": best["wall_s"] / instances * 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "runs": runs,
    }
    for key, ref_runs in reference_runs.items():
        fastest = min(ref_runs, key=lambda r: r["wall_s"])
        figures.update({f"{key}_wall_s": fastest["wall_s"], f"{key}_cpu_s": fastest["cpu_s"],
                        f"{key}_us_per_instance": fastest["wall_s"] / instances * 1e6,
                        f"vs_{key}": best["wall_s"] / fastest["wall_s"], f"{key}_runs": ref_runs})
    cold_note = (f"; inside the receive callback, {args.cold_mb} MB written over before each read"
                 if args.cold_mb else "")
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{corpus.spec.key()}: {instances} instances, {dataset_bytes / 1e6:.1f} MB of datasets; best of "
              f"{len(runs)}: {figures['wall_s']:.3f} s, {figures['instances_per_s']:.0f} instances/s, "
              f"{figures['dataset_gb_per_s']:.2f} GB/s, {figures['us_per_instance']:.1f} us/instance, "
              f"CPU {figures['cpu_s']:.3f} s{' (with the observers and their threads)' if args.observers else ''}"
              f"{cold_note}")
        for key, (name, title, _) in references.items():
            print(f"{title} fed the same stream: best of {len(reference_runs[key])}: "
                  f"{figures[f'{key}_wall_s']:.3f} s, {figures[f'{key}_us_per_instance']:.1f} us/instance, "
                  f"CPU {figures[f'{key}_cpu_s']:.3f} s; fastscp / {name} {figures[f'vs_{key}']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
