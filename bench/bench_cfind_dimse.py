"""C-FIND over the network: fastscp's C-FIND SCP against dcmtk's dcmqrscp
and Orthanc on the same files, STUDY-level queries a viewer sends.

Generates ``--instances`` small CT/MR files in ``--studies`` studies (two
series each, two studies per patient, study dates spread over two years),
then:

- fastscp: ``fastscp serve`` with an index; the files are sent with dcmtk
  storescu, the server is stopped (its clean stop writes every queued index
  row) and started again on the same storage and index;
- dcmqrscp: its index is built by ``dcmqridx`` over the same files, one
  storage area ``QRSCP ... RW (500, 1024mb) ANY`` (dcmqrscp caps a storage
  area at 500 studies, so ``--studies`` stays at most 500); forking per
  association, its default;
- Orthanc (Debian's package): its SQLite index, filled by storescu
  (DicomThreadsCount 4, DicomAlwaysAllowFind).

Every process (servers, findscu) runs with TCP_NODELAY=1, which dcmtk reads
from the environment.

Two query kinds, Study Root, STUDY level, asking the same return keys
(names, date, time, accession, Study ID, description, Modalities in Study,
Number of Study Related Instances):

- by PatientID (two studies match), and
- by StudyDate one-month range plus ModalitiesInStudy.

Each is timed two ways: ``--queries`` queries on one held association
(pynetdicom as SCU, from sending the request to the final response; its
reactor's poll is disabled, ``fastscp.scu.commands.answers_to_the_caller``,
so that it cannot take a response) and
``--processes`` runs of dcmtk ``findscu`` (one process and one association
per query: what a script pays). ``--floor`` also times ``--processes`` runs of dcmtk ``echoscu`` per
server (one process, one association, one C-ECHO): the floor under the
findscu figures. ``--raw`` adds a third: the same queries on
one association held by a bare socket client (``held_raw``), which measures
the servers without pynetdicom's own per-query and per-response cost. The matches of every query are compared
with the studies the generated data holds for it; a server that answers
otherwise is named in a note. Prints p50/p90/p99
per server, kind and way, the ratio of each peer's median to fastscp's, the
machine and the load average.

    python bench/bench_cfind_dimse.py --instances 10000 --studies 500 --queries 200 --processes 40

``--workdir DIR`` keeps the files, the three indexes and ``data.json`` (what
the generated data holds); a later run with ``--workdir DIR --reuse`` starts
the three servers on them without generating or loading anything
(``dcmqridx`` alone takes minutes at 10,000 instances), so code changes can
be measured on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from receivers import dcmtk_tool, free_port, orthanc_exe, wait_for_port

from fastscp.scu.commands import answers_to_the_caller

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
SOP = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
START_DAY = 20089  # 2025-01-01, days since 1970-01-01
DAYS = 730
# dcmtk reads TCP_NODELAY from the environment (off by default: Nagle's delay
# then holds a response's second PDU); every process here gets it, as in
# bench/receivers.py
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
RETURN_KEYS = ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
               "StudyID", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")


def _date(day: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(day * 86400))


def generate(folder: Path, instances: int, studies: int, seed: int) -> tuple[list[str], list[tuple[int, str, str]]]:
    """Write the files; returns (patient IDs, (day, patient ID, modalities) per study)."""
    rng = random.Random(seed)
    per_study = max(2, instances // studies)
    patients: list[str] = []
    days: list[tuple[int, str, str]] = []
    made = 0
    for s in range(studies):
        patient = f"PAT{s // 2:05d}"
        if s % 2 == 0:
            patients.append(patient)
        day = START_DAY + rng.randrange(DAYS)
        study_uid = generate_uid()
        modalities = ("CT", "MR") if s % 3 else ("CT", "CT")
        days.append((day, patient, "".join(modalities)))
        for series in range(2):
            series_uid = generate_uid()
            modality = modalities[series]
            for n in range(per_study // 2):
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = SOP[modality]
                meta.MediaStorageSOPInstanceUID = generate_uid()
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds = Dataset()
                ds.file_meta = meta
                ds.SOPClassUID, ds.SOPInstanceUID = SOP[modality], meta.MediaStorageSOPInstanceUID
                ds.PatientName, ds.PatientID = f"Patient^{s // 2:05d}", patient
                ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
                ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, _date(day), "101500"
                ds.AccessionNumber, ds.StudyID, ds.StudyDescription = f"ACC{s:06d}", str(s), f"STUDY {s}"
                ds.ReferringPhysicianName = "Ref^Doctor"
                ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series_uid, series + 1, modality
                ds.InstanceNumber = n + 1
                ds.Rows = ds.Columns = 4
                ds.BitsAllocated = ds.BitsStored = 16
                ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
                ds.PhotometricInterpretation = "MONOCHROME2"
                ds.PixelData = bytes(32)
                ds.save_as(folder / f"{made:06d}.dcm", enforce_file_format=True)
                made += 1
    return patients, days


def identifier(**match: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, match.get(keyword, ""))
    return ds


def findscu_keys(ds: Dataset) -> list[str]:
    out: list[str] = []
    for element in ds:
        out += ["-k", f"{element.keyword}={element.value}" if element.value else element.keyword]
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Server:
    def __init__(self, name: str, ae_title: str, port: int, argv: list[str], log: Path) -> None:
        self.name, self.ae_title, self.port = name, ae_title, port
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=NODELAY)
        wait_for_port(port, self.proc, 60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def held(server: Server, queries: list[Dataset]) -> tuple[list[float], list[int]]:
    """Seconds and matches per query on one association (pynetdicom)."""
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(STUDY_FIND, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    if not assoc.is_established:
        raise RuntimeError(f"{server.name}: association refused")
    # pynetdicom leaves Nagle on: its request's data set PDU would wait for the
    # ACK of its command PDU, which a server that delays ACKs holds 40 ms
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is None:
        raise RuntimeError("pynetdicom's socket is not reachable to set TCP_NODELAY")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    answers_to_the_caller(assoc)  # pynetdicom's reactor must not take a response (scu/commands.py)
    times: list[float] = []
    matches: list[int] = []
    try:
        for ds in queries:
            t0 = time.perf_counter()
            n = 0
            for status, _ in assoc.send_c_find(ds, STUDY_FIND):
                if int(status.Status) in (0xFF00, 0xFF01):
                    n += 1
                elif int(status.Status) != 0:
                    raise RuntimeError(f"{server.name}: status {int(status.Status):#06x}")
            times.append(time.perf_counter() - t0)
            matches.append(n)
    finally:
        assoc.release()
    return times, matches


def held_raw(server: Server, queries: list[Dataset]) -> tuple[list[float], list[int]]:
    """Seconds and matches per query on one association, the client a bare
    socket (fastscp's SCU association code, TCP_NODELAY): each request goes
    out in one write and each response is read as it arrives, so the figure
    is the server's latency without pynetdicom's own cost (its reactor polls
    the socket with 1 ms sleeps and decodes every PDU in Python)."""
    from fastscp.protocol import dimse as D
    from fastscp.protocol import pdu as P
    from fastscp.services.identifiers import encode_identifier
    from fastscp.services.store_scu import StoreAssociation

    syntax = str(ExplicitVRLittleEndian)

    def pdv(context: int, payload: bytes, command: bool) -> bytes:
        return struct.pack(">BBIIBB", P.P_DATA_TF, 0, len(payload) + 6, len(payload) + 2, context,
                           3 if command else 2) + payload

    assoc = StoreAssociation("127.0.0.1", server.port, "BENCH", server.ae_title, [(STUDY_FIND, syntax)], timeout=120)
    context = assoc.accepted.get((STUDY_FIND, syntax))
    if context is None:
        assoc.abort()
        raise RuntimeError(f"{server.name}: Study Root FIND context refused")
    times: list[float] = []
    matches: list[int] = []
    try:
        for message_id, ds in enumerate(queries, 1):
            command = D.encode_command({D.AFFECTED_SOP_CLASS: STUDY_FIND, D.COMMAND_FIELD: D.C_FIND_RQ,
                                        D.MESSAGE_ID: message_id, D.PRIORITY: 0}, True)
            request = pdv(context, command, True) + pdv(context, encode_identifier(ds, syntax), False)
            t0 = time.perf_counter()
            assoc._send(request)
            n, status, fragments = 0, None, bytearray()
            while status is None:
                pdu_type, body = assoc._read_pdu()
                if pdu_type != P.P_DATA_TF:
                    raise RuntimeError(f"{server.name}: PDU type {pdu_type:#04x} during a C-FIND")
                pos = 0
                while pos + 6 <= len(body):
                    (length,) = struct.unpack_from(">I", body, pos)
                    header = body[pos + 5]
                    if header & 0x01:  # command fragment
                        fragments += body[pos + 6:pos + 4 + length]
                        if header & 0x02:
                            value = int(D.decode_command(bytes(fragments)).get(D.STATUS, 0xC000))
                            fragments = bytearray()
                            if value in (0xFF00, 0xFF01):
                                n += 1
                            else:
                                status = value
                    pos += 4 + length
            times.append(time.perf_counter() - t0)
            if status != 0:
                raise RuntimeError(f"{server.name}: status {status:#06x}")
            matches.append(n)
    finally:
        assoc.release()
    return times, matches


def per_process(server: Server, queries: list[Dataset]) -> tuple[list[float], list[int]]:
    """Seconds and matches per dcmtk findscu run (one association each)."""
    exe = dcmtk_tool("findscu")
    times: list[float] = []
    matches: list[int] = []
    for ds in queries:
        cmd = [exe, "-v", "-S", "-aec", server.ae_title, *findscu_keys(ds), "127.0.0.1", str(server.port)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, timeout=120, env=NODELAY)
        times.append(time.perf_counter() - t0)
        text = out.stderr.decode("utf-8", "replace") + out.stdout.decode("utf-8", "replace")
        if out.returncode != 0 or "Final Find Response (Success)" not in text:
            raise RuntimeError(f"{server.name}: findscu failed: {text[-500:]}")
        matches.append(text.count("(Pending"))
    return times, matches


def per_process_echo(server: Server, count: int) -> list[float]:
    """Seconds per dcmtk echoscu run (one process, one association, one
    C-ECHO): the floor under a findscu run, what starting a process and an
    association costs against that server."""
    exe = dcmtk_tool("echoscu")
    times: list[float] = []
    for _ in range(count):
        cmd = [exe, "-aec", server.ae_title, "127.0.0.1", str(server.port)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, timeout=120, env=NODELAY)
        times.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise RuntimeError(f"{server.name}: echoscu failed: {out.stderr.decode('utf-8', 'replace')[-500:]}")
    return times


def machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{os.cpu_count()} cores, {model}, {mem_gib:.0f} GiB, {platform.platform()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=5000)
    ap.add_argument("--studies", type=int, default=250, help="at most 500 (dcmqrscp's cap per storage area)")
    ap.add_argument("--queries", type=int, default=100, help="per kind, on one held association")
    ap.add_argument("--processes", type=int, default=20, help="findscu runs per kind")
    ap.add_argument("--raw", action="store_true",
                    help="also time a held association whose client is a bare socket (no pynetdicom)")
    ap.add_argument("--floor", action="store_true",
                    help="also time --processes echoscu runs per server: the process and association floor "
                         "under the findscu figures")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary folder, removed)")
    ap.add_argument("--reuse", action="store_true",
                    help="serve the data and indexes an earlier run left in --workdir (no generating, no loading)")
    ap.add_argument("--servers", default="fastscp,dcmqrscp,orthanc",
                    help="with --reuse: which of fastscp, dcmqrscp, orthanc to query (default: all three)")
    args = ap.parse_args()
    chosen = set(args.servers.split(","))
    if not chosen or not chosen <= {"fastscp", "dcmqrscp", "orthanc"}:
        ap.error("--servers: a comma-separated subset of fastscp,dcmqrscp,orthanc")
    if len(chosen) < 3 and not args.reuse:
        ap.error("--servers needs --reuse (a first run loads all three servers)")
    if not 1 <= args.studies <= 500:
        ap.error("--studies must be 1..500 (dcmqrscp keeps at most 500 studies per storage area)")
    if args.reuse and (args.workdir is None or not (args.workdir / "data.json").is_file()):
        ap.error("--reuse needs the --workdir of an earlier complete run (with its data.json)")
    # absolute: Orthanc reads the paths of its configuration relative to the file
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-cfind-dimse-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    try:
        files = work / "files"
        if args.reuse:
            data = json.loads((work / "data.json").read_text())
            patients = list(data["patients"])
            studies = [(int(day), str(patient), str(mods)) for day, patient, mods in data["studies"]]
            n_files = len(list(files.iterdir()))
            print(f"data: {n_files} instances, {len(studies)} studies, {len(patients)} patients "
                  f"(reused from {work})")
        else:
            files.mkdir()
            t0 = time.perf_counter()
            patients, studies = generate(files, args.instances, args.studies, args.seed)
            n_files = len(list(files.iterdir()))
            print(f"data: {n_files} instances, {args.studies} studies, {len(patients)} patients "
                  f"(generated in {time.perf_counter() - t0:.1f} s)")

        # fastscp: store with storescu, stop (flushes the index writer), start again
        port = free_port()
        argv = [sys.executable, "-m", "fastscp.cli", "serve", str(port), "FASTSCP", "--storage-dir",
                str(work / "fastscp"), "--index-db", str(work / "fastscp.db"), "--status-port", "0"]
        if not args.reuse:
            loader = Server("fastscp", "FASTSCP", port, argv, work / "fastscp-load.log")
            t0 = time.perf_counter()
            sent = subprocess.run([dcmtk_tool("storescu"), "-aec", "FASTSCP", "+sd", "+r", "127.0.0.1",
                                   str(port), str(files)], capture_output=True, timeout=3600)
            loader.stop()
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stderr.decode()[-500:]}")
            print(f"fastscp: stored and indexed in {time.perf_counter() - t0:.1f} s (storescu, then a clean stop)")
        if "fastscp" in chosen:
            servers.append(Server("fastscp", "FASTSCP", port, argv, work / "fastscp.log"))

        # dcmqrscp: index built by dcmqridx over the same files
        qrdb = work / "dcmqrscp-db"
        if not args.reuse:
            qrdb.mkdir()
            t0 = time.perf_counter()
            subprocess.run([dcmtk_tool("dcmqridx"), str(qrdb), *sorted(map(str, files.iterdir()))], check=True,
                           capture_output=True, timeout=7200)
            print(f"dcmqrscp: dcmqridx indexed in {time.perf_counter() - t0:.1f} s")
        qport = free_port()
        cfg = work / "dcmqrscp.cfg"
        cfg.write_text(f"NetworkTCPPort = {qport}\nMaxPDUSize = 131072\nMaxAssociations = 16\n"
                       "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
                       f"AETable BEGIN\nQRSCP {qrdb} RW (500, 1024mb) ANY\nAETable END\n")
        if "dcmqrscp" in chosen:
            servers.append(Server("dcmqrscp", "QRSCP", qport, [dcmtk_tool("dcmqrscp"), "-c", str(cfg)],
                                  work / "dcmqrscp.log"))

        # Orthanc: its SQLite index, filled by storescu (a Success means stored and indexed)
        oport = free_port()
        (work / "orthanc-index").mkdir(exist_ok=args.reuse)
        ocfg = work / "orthanc.json"
        ocfg.write_text(json.dumps({
            "Name": "bench-cfind", "StorageDirectory": str(work / "orthanc-storage"),
            "IndexDirectory": str(work / "orthanc-index"), "StorageCompression": False, "DicomAet": "ORTHANC",
            "DicomPort": oport, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowFind": True, "DicomThreadsCount": 4,
            "HttpServerEnabled": True, "HttpPort": free_port(), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [], "SaveJobs": False}))
        if "orthanc" in chosen:
            servers.append(Server("orthanc", "ORTHANC", oport, [orthanc_exe(), str(ocfg)], work / "orthanc.log"))
        if not args.reuse:
            t0 = time.perf_counter()
            sent = subprocess.run([dcmtk_tool("storescu"), "-aec", "ORTHANC", "+sd", "+r", "127.0.0.1",
                                   str(oport), str(files)], capture_output=True, timeout=3600, env=NODELAY)
            if sent.returncode != 0:
                raise RuntimeError(f"storescu to Orthanc failed: {sent.stderr.decode()[-500:]}")
            print(f"orthanc: stored and indexed in {time.perf_counter() - t0:.1f} s (storescu)")
            # every server holds the data now: a later --reuse run may start from here
            (work / "data.json").write_text(json.dumps({"patients": patients, "studies": studies}))

        rng = random.Random(args.seed + 1)

        def by_patient(n: int) -> list[tuple[Dataset, int]]:
            out = []
            for _ in range(n):
                patient = rng.choice(patients)
                out.append((identifier(PatientID=patient), sum(1 for s in studies if s[1] == patient)))
            return out

        def by_date(n: int) -> list[tuple[Dataset, int]]:
            out = []
            for _ in range(n):
                first = START_DAY + rng.randrange(DAYS - 30)
                expected = sum(1 for s in studies if first <= s[0] <= first + 30 and "MR" in s[2])
                out.append((identifier(StudyDate=f"{_date(first)}-{_date(first + 30)}", ModalitiesInStudy="MR"),
                            expected))
            return out

        kinds: list[tuple[str, Callable[[int], list[tuple[Dataset, int]]]]] = [
            ("by PatientID", by_patient), ("StudyDate one-month range + ModalitiesInStudy", by_date)]
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        print(f"machine: {machine()}")
        print("| query | way | server | n | p50 | p90 | p99 | matches/query |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        ratios: list[str] = []
        notes: list[str] = []
        for kind, make in kinds:
            ways: list[tuple[str, int, Callable[[Server, list[Dataset]], tuple[list[float], list[int]]]]] = [
                ("held association (pynetdicom)", args.queries, held)]
            if args.raw:
                ways.append(("held association (raw socket)", args.queries, held_raw))
            ways.append(("findscu process", args.processes, per_process))
            for way, count, run in ways:
                made = make(count)
                queries = [q for q, _ in made]
                expected = [e for _, e in made]
                results = {}
                for server in servers:
                    run(server, queries[:3])  # warm-up: caches, first association
                    results[server.name] = run(server, queries)
                for name, (_, matches) in results.items():
                    wrong = sum(1 for got, want in zip(matches, expected, strict=True) if got != want)
                    if wrong:
                        notes.append(f"{name}, {kind}, {way}: {wrong} of {len(matches)} queries did not return "
                                     "the studies the data holds")
                for name, (times, matches) in results.items():
                    ms = [t * 1e3 for t in times]
                    print(f"| {kind} | {way} | {name} | {len(ms)} | {percentile(ms, 0.5):.1f} ms | "
                          f"{percentile(ms, 0.9):.1f} ms | {percentile(ms, 0.99):.1f} ms | "
                          f"{statistics.mean(matches):.1f} |")
                for name in ("dcmqrscp", "orthanc"):
                    if name not in results or "fastscp" not in results:
                        continue
                    ratio = statistics.median(results[name][0]) / statistics.median(results["fastscp"][0])
                    ratios.append(f"{kind}, {way}: {name} p50 / fastscp p50 = {ratio:.2f}")
        if args.floor:
            floors = {}
            for server in servers:
                per_process_echo(server, 1)  # warm-up
                floors[server.name] = per_process_echo(server, args.processes)
            for name, times in floors.items():
                ms = [t * 1e3 for t in times]
                print(f"| C-ECHO (floor) | echoscu process | {name} | {len(ms)} | {percentile(ms, 0.5):.1f} ms | "
                      f"{percentile(ms, 0.9):.1f} ms | {percentile(ms, 0.99):.1f} ms | - |")
            for name in ("dcmqrscp", "orthanc"):
                if name in floors and "fastscp" in floors:
                    ratio = statistics.median(floors[name]) / statistics.median(floors["fastscp"])
                    ratios.append(f"C-ECHO (floor), echoscu process: {name} p50 / fastscp p50 = {ratio:.2f}")
        print("\n".join(ratios + notes))
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        for server in servers:
            server.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
