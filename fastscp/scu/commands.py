"""Client tools on pynetdicom: ``fastscp echo`` (C-ECHO, PS3.4 A) and
``fastscp send`` (C-STORE, PS3.4 B).

``send`` reads only the file meta of each file first (PS3.10 7.1) to learn
its SOP class and transfer syntax; files without one are skipped with a
note. One presentation context is proposed per (SOP class, transfer syntax)
pair (PS3.8 9.3.2.2; at most 128 per association, so a mix of more pairs is
sent in several rounds). ``--parallel N`` opens N associations that take
files from one queue. Files are sent as they are on disk
(pynetdicom's chunked sending): no decoding, no re-encoding. A context the
receiver refuses (PS3.8 9.3.3.2: result 1-4) is named once, SOP class and
transfer syntax, and its files are not sent; it is not retried, since the
same proposal would be refused again. A progress line
(files, MB, MB/s, ETA) goes to stderr when it is a terminal; a summary of
the C-STORE statuses ends the run. Exit status: 0 when every file was
stored (success or warning), 1 when anything failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

    from pynetdicom import AE
    from pynetdicom.association import Association
    from pynetdicom.dimse import _QueueItem
    from pynetdicom.presentation import PresentationContext

__all__ = ["SendReport", "collect_files", "register", "send_files"]

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255
WARNING_STATUSES = {0x0001, 0xB000, 0xB006, 0xB007}


def _peer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--aec", default="FASTSCP", help="called AE title (default FASTSCP)")
    p.add_argument("--aet", default="FASTSCU", help="our (calling) AE title (default FASTSCU)")
    p.add_argument("--timeout", type=float, default=30.0, help="network/ACSE/DIMSE timeout in seconds (default 30)")
    p.add_argument("--tls", action="store_true", help="DICOM over TLS (PS3.15 BCP 195 profile)")
    p.add_argument("--tls-ca", help="CA bundle that signed the server's certificate (default: system store)")
    p.add_argument("--tls-cert", help="our certificate (when the server asks for one)")
    p.add_argument("--tls-key", help="key of --tls-cert")
    p.add_argument("--tls-no-verify", action="store_true", help="do not verify the server certificate (testing only)")
    p.add_argument("-v", "--verbose", action="store_true", help="show pynetdicom's log")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("echo", help="send a C-ECHO (DICOM ping)")
    _peer_args(p)
    p.set_defaults(func=_echo)
    p = sub.add_parser("send", help="send DICOM files and folders (C-STORE)")
    _peer_args(p)
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("-j", "--parallel", type=int, default=1, metavar="N", help="associations at once (default 1)")
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress line on stderr (auto: when it is a terminal)")
    p.set_defaults(func=_send)


# ---- shared -------------------------------------------------------------------------

def _quiet_pynetdicom(verbose: bool) -> None:
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def answers_to_the_caller(assoc: Association) -> None:
    """Let only the thread waiting in ``send_c_store``/``send_c_echo``/``send_c_find`` take DIMSE messages.

    pynetdicom's reactor thread polls the DIMSE queue (``get_msg(block=False)``)
    and its pause handshake with ``send_*`` is racy: the reactor can pass its
    checkpoint just before the caller clears it, then take the C-STORE-RSP,
    log "Received unexpected C-STORE service message" and leave the caller
    waiting until the DIMSE timeout aborts the association; of a C-FIND it
    takes one Pending response, and the caller counts one match fewer
    (pynetdicom 3.0.4, ``_run_reactor``; its issue 875). A receiver that
    answers fast hits that window more often. Our echo and send, the C-FIND
    benchmark's held client and the tests' SCUs expect nothing but answers
    on their associations, so the reactor's polls get nothing."""
    dimse = getattr(assoc, "dimse", None)
    get_msg = getattr(dimse, "get_msg", None)
    if dimse is None or get_msg is None:
        return

    def caller_only(block: bool = False) -> _QueueItem:
        return get_msg(block=True) if block else (None, None)

    dimse.get_msg = caller_only


def _make_ae(args: argparse.Namespace) -> AE:
    from pynetdicom import AE

    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.connection_timeout = args.timeout
    return ae


def _tls_args(args: argparse.Namespace) -> tuple[ssl.SSLContext, str] | None:
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    from ..net.tls import client_ssl_context

    ctx = client_ssl_context(args.tls_ca, args.tls_cert, args.tls_key, verify=not args.tls_no_verify)
    return ctx, args.host


_CONTEXT_RESULTS: dict[int | None, str] = {  # PS3.8 Table 9-18, Result/Reason of a presentation context
    1: "user rejection",
    2: "no reason given (provider rejection)",
    3: "abstract syntax (SOP class) not supported",
    4: "transfer syntax not supported",
}


def _uid_text(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return uid if name == uid else f"{name} ({uid})"


def describe_pair(pair: tuple[str, str]) -> str:
    """``MR Image Storage (1.2...4) in Explicit VR Little Endian (1.2...1)``"""
    return f"{_uid_text(pair[0])} in {_uid_text(pair[1])}"


def refused_pairs(assoc: Association) -> dict[tuple[str, str], str]:
    """The (SOP class, transfer syntax) pairs the peer refused in its
    A-ASSOCIATE-AC, each with the reason it gave. Our proposals carry one
    transfer syntax each, so a context ID names one pair."""
    requestor = getattr(assoc, "requestor", None)
    proposed: dict[int | None, PresentationContext] = {
        cx.context_id: cx for cx in getattr(requestor, "requested_contexts", None) or []}
    out: dict[tuple[str, str], str] = {}
    for cx in assoc.rejected_contexts:
        rq = proposed.get(cx.context_id)
        if rq is not None and rq.transfer_syntax:
            out[(str(rq.abstract_syntax), str(rq.transfer_syntax[0]))] = \
                _CONTEXT_RESULTS.get(cx.result, f"result {cx.result}")
    return out


def _why_not_established(assoc: Association, host: str, port: int, aec: str, tls: bool) -> str:
    if assoc.is_rejected:
        return (f"association rejected by {host}:{port}: check the called AE title ({aec}), "
                "our calling AE title and the peer's access list")
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    if tls:
        return f"TLS handshake or association with {host}:{port} failed (certificate, or not a TLS port?)"
    return f"{host}:{port} closed or aborted the association (not a DICOM port, or TLS expected?)"


# ---- echo ---------------------------------------------------------------------------

def _echo(args: argparse.Namespace) -> int:
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # sop_class makes its names at import

    _quiet_pynetdicom(args.verbose)
    try:
        tls = _tls_args(args)
    except (OSError, ValueError) as exc:
        print(f"error: TLS setup: {exc}", file=sys.stderr)
        return 2
    ae = _make_ae(args)
    ae.add_requested_context(Verification)
    t0 = time.monotonic()
    assoc = ae.associate(args.host, args.port, ae_title=args.aec, tls_args=tls)
    if not assoc.is_established:
        print(f"C-ECHO failed: {_why_not_established(assoc, args.host, args.port, args.aec, tls is not None)}",
              file=sys.stderr)
        return 1
    answers_to_the_caller(assoc)
    status = assoc.send_c_echo()
    assoc.release()
    ms = (time.monotonic() - t0) * 1000
    code = getattr(status, "Status", None)
    if code == 0:
        print(f"C-ECHO to {args.aec}@{args.host}:{args.port} succeeded in {ms:.0f} ms")
        return 0
    print(f"C-ECHO failed: {'no answer' if code is None else f'status 0x{code:04X}'}", file=sys.stderr)
    return 1


# ---- send ---------------------------------------------------------------------------

@dataclasses.dataclass
class _File:
    path: str
    sop_class: str
    transfer_syntax: str
    size: int


@dataclasses.dataclass
class SendReport:
    files: int = 0
    bytes: int = 0
    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    not_sent: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)
    failed: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (path, status)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # non-DICOM (path, why)
    associations: int = 0
    seconds: float = 0.0
    association_errors: set[str] = dataclasses.field(default_factory=set)  # each printed once
    refused: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # (SOP class, TS) -> why

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_sent


def collect_files(paths: Iterable[str], recursive: bool) -> tuple[list[str], list[str]]:
    """Files named, and those in the folders named (sub-folders only when
    ``recursive``); also the folders whose sub-folders were left out."""
    out: list[str] = []
    notes: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                if not recursive:
                    if dirs:
                        notes.append(f"{root}: {len(dirs)} sub-folder(s) not searched (use --recursive)")
                    dirs[:] = []
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                out.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
        else:
            out.append(path)
    return out, notes


def _read_meta(path: str) -> _File:
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    ts = str(meta.get("TransferSyntaxUID", "") or "")
    if not sop_class or not ts:
        raise ValueError("file meta lacks the SOP class or transfer syntax")
    return _File(path, sop_class, ts, os.path.getsize(path))


def _status_name(code: int) -> str:
    try:
        from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

        for table in (STORAGE_SERVICE_CLASS_STATUS, GENERAL_STATUS):
            if code in table:
                return str(table[code][1] or table[code][0])
    except ImportError:
        pass
    if 0xA700 <= code <= 0xA7FF:
        return "Refused: Out of Resources"
    if 0xA900 <= code <= 0xA9FF:
        return "Error: Data Set does not match SOP Class"
    if 0xC000 <= code <= 0xCFFF:
        return "Error: Cannot understand"
    return "status"


class _Progress:
    def __init__(self, total_files: int, total_bytes: int, enabled: bool) -> None:
        self.total_files, self.total_bytes = total_files, total_bytes
        self.enabled = enabled
        self.files = self.bytes = 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def add(self, size: int) -> None:
        with self._lock:
            self.files += 1
            self.bytes += size
            now = time.monotonic()
            if self.enabled and (now - self._last > 0.2 or self.files == self.total_files):
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        secs = max(now - self.t0, 1e-6)
        rate = self.bytes / secs
        eta = (self.total_bytes - self.bytes) / rate if rate > 0 else 0.0
        pct = 100.0 * self.bytes / self.total_bytes if self.total_bytes else 100.0
        width = 24
        fill = int(width * pct / 100)
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {self.files}/{self.total_files} files "
                         f"{self.bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB {rate / 1e6:.1f} MB/s "
                         f"ETA {int(eta) // 60}:{int(eta) % 60:02d} ")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def send_files(args: argparse.Namespace, files: list[_File], report: SendReport, progress: _Progress) -> None:
    """Send ``files`` over ``args.parallel`` associations, filling ``report``."""
    import pynetdicom._config as pconfig

    pconfig.STORE_SEND_CHUNKED_DATASET = True  # stream the file as it is
    tls = _tls_args(args)
    pairs = sorted({(f.sop_class, f.transfer_syntax) for f in files})
    rounds = [set(pairs[i:i + MAX_CONTEXTS]) for i in range(0, len(pairs), MAX_CONTEXTS)]
    lock = threading.Lock()
    for round_pairs in rounds:
        todo: queue.SimpleQueue[_File] = queue.SimpleQueue()
        for f in files:
            if (f.sop_class, f.transfer_syntax) in round_pairs:
                todo.put(f)
        workers = [threading.Thread(target=_worker, args=(args, tls, sorted(round_pairs), todo, report, progress, lock),
                                    name=f"send-{i}", daemon=True) for i in range(max(1, args.parallel))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        while True:  # whatever no association could take
            try:
                f = todo.get_nowait()
            except queue.Empty:
                break
            pair = (f.sop_class, f.transfer_syntax)
            report.not_sent.append((f.path, _refused_text(pair, report.refused[pair]) if pair in report.refused
                                    else "no association could be established"))


def _refused_text(pair: tuple[str, str], why: str) -> str:
    return f"no presentation context accepted for {describe_pair(pair)}: {why}"


def _note_refusals(assoc: Association, args: argparse.Namespace, report: SendReport) -> None:
    """Record and print (once per pair) the contexts ``assoc``'s peer refused.
    Called with the report's lock held."""
    for pair, why in refused_pairs(assoc).items():
        if pair not in report.refused:
            report.refused[pair] = why
            print(f"error: no presentation context accepted by {args.aec} at {args.host}:{args.port} "
                  f"for {describe_pair(pair)}: {why}", file=sys.stderr)


def _worker(args: argparse.Namespace, tls: tuple[ssl.SSLContext, str] | None, pairs: list[tuple[str, str]],
            todo: queue.SimpleQueue[_File],
            report: SendReport, progress: _Progress, lock: threading.Lock) -> None:
    ae = _make_ae(args)
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, ts)
    assoc = None
    failures_in_a_row = 0
    try:
        while True:
            if assoc is None or not assoc.is_established:
                with lock:  # a refused context would be refused again: do not ask twice
                    all_refused = all(pair in report.refused for pair in pairs)
                if all_refused or failures_in_a_row >= 3:
                    return
                assoc = ae.associate(args.host, args.port, ae_title=args.aec, tls_args=tls, max_pdu=0)
                with lock:
                    _note_refusals(assoc, args, report)
                    all_refused = all(pair in report.refused for pair in pairs)
                if not assoc.is_established:
                    if all_refused:  # pynetdicom aborts an association with no context accepted
                        return
                    failures_in_a_row += 1
                    why = _why_not_established(assoc, args.host, args.port, args.aec, tls is not None)
                    with lock:
                        if why not in report.association_errors:
                            report.association_errors.add(why)
                            print(f"error: {why}", file=sys.stderr)
                    assoc = None
                    continue
                answers_to_the_caller(assoc)
                with lock:
                    report.associations += 1
            try:
                f = todo.get_nowait()
            except queue.Empty:
                return
            pair = (f.sop_class, f.transfer_syntax)
            with lock:
                refused = report.refused.get(pair)
                if refused is not None:
                    report.not_sent.append((f.path, _refused_text(pair, refused)))
            if refused is not None:
                progress.add(f.size)
                continue
            try:
                status = assoc.send_c_store(f.path)
                code = getattr(status, "Status", None)
                why = "no answer (association lost)"
            except (ValueError, RuntimeError, OSError) as exc:
                code, why = None, str(exc)
            with lock:
                if code is None:
                    report.not_sent.append((f.path, why))
                else:
                    report.statuses[code] += 1
                    if code != 0 and code not in WARNING_STATUSES:
                        report.failed.append((f.path, code))
                    else:
                        report.files += 1
                        report.bytes += f.size
            progress.add(f.size)
            failures_in_a_row = 0 if code is not None else failures_in_a_row + 1
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()


def _send(args: argparse.Namespace) -> int:
    from pydicom.errors import InvalidDicomError

    _quiet_pynetdicom(args.verbose)
    if args.parallel < 1:
        print("error: --parallel wants 1 or more", file=sys.stderr)
        return 2
    try:
        _tls_args(args)
    except (OSError, ValueError) as exc:
        print(f"error: TLS setup: {exc}", file=sys.stderr)
        return 2
    report = SendReport()
    names, notes = collect_files(args.paths, args.recursive)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    files: list[_File] = []
    for name in names:
        try:
            files.append(_read_meta(name))
        except (InvalidDicomError, ValueError, EOFError) as exc:
            report.skipped.append((name, str(exc).splitlines()[0] if str(exc) else "not DICOM"))
        except OSError as exc:
            report.skipped.append((name, exc.strerror or str(exc)))
    for path, why in report.skipped:
        print(f"skipped (not DICOM): {path}: {why}", file=sys.stderr)
    if not files:
        print("error: no DICOM files to send", file=sys.stderr)
        return 1
    enabled = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    progress = _Progress(len(files), sum(f.size for f in files), enabled)
    t0 = time.monotonic()
    send_files(args, files, report, progress)
    progress.finish()
    report.seconds = time.monotonic() - t0
    _print_summary(report, len(files))
    return 0 if report.ok else 1


def _print_summary(r: SendReport, total: int) -> None:
    mb = r.bytes / 1e6
    rate = mb / r.seconds if r.seconds > 0 else 0.0
    print(f"stored {r.files}/{total} file(s), {mb:.1f} MB in {r.seconds:.2f} s ({rate:.1f} MB/s) "
          f"over {r.associations} association(s)")
    for code, n in sorted(r.statuses.items()):
        kind = "success" if code == 0 else "warning" if code in WARNING_STATUSES else "failure"
        print(f"  {kind} 0x{code:04X} ({_status_name(code)}): {n}")
    if r.not_sent:
        print(f"  not sent: {len(r.not_sent)}")
    for pair in sorted(r.refused):
        print(f"  refused by the receiver: {describe_pair(pair)}")
    if r.skipped:
        print(f"  skipped (not DICOM): {len(r.skipped)}")
    for path, code in r.failed[:20]:
        print(f"failed: {path}: 0x{code:04X} {_status_name(code)}", file=sys.stderr)
    for path, why in r.not_sent[:20]:
        print(f"not sent: {path}: {why}", file=sys.stderr)
