"""Client tools on pynetdicom: ``fastscp echo`` (C-ECHO) and ``fastscp send`` (C-STORE)."""

from __future__ import annotations

import argparse
import os
import sys


def _peer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--aec", default="FASTSCP", help="called AE title")
    p.add_argument("--aet", default="FASTSCU", help="our (calling) AE title")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("echo", help="send a C-ECHO (DICOM ping)")
    _peer_args(p)
    p.set_defaults(func=_echo)
    p = sub.add_parser("send", help="send DICOM files (C-STORE)")
    _peer_args(p)
    p.add_argument("paths", nargs="+", help="files or directories")
    p.set_defaults(func=_send)


def _echo(args: argparse.Namespace) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=args.aet)
    ae.add_requested_context(Verification)
    assoc = ae.associate(args.host, args.port, ae_title=args.aec)
    if not assoc.is_established:
        print(f"association with {args.host}:{args.port} ({args.aec}) failed", file=sys.stderr)
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    ok = status is not None and status.Status == 0
    print("C-ECHO succeeded" if ok else f"C-ECHO failed: {status}")
    return 0 if ok else 1


def _files(paths: list[str]) -> list[str]:
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, _dirs, names in os.walk(path):
                out.extend(os.path.join(root, n) for n in sorted(names))
        else:
            out.append(path)
    return out


def _send(args: argparse.Namespace) -> int:
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(f) for f in _files(args.paths)]
    ae = AE(ae_title=args.aet)
    for sop_class, ts in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate(args.host, args.port, ae_title=args.aec)
    if not assoc.is_established:
        print(f"association with {args.host}:{args.port} ({args.aec}) failed", file=sys.stderr)
        return 1
    failures = 0
    for ds in datasets:
        status = assoc.send_c_store(ds)
        if status is None or status.Status != 0:
            failures += 1
            print(f"{ds.SOPInstanceUID}: status {getattr(status, 'Status', None)}", file=sys.stderr)
    assoc.release()
    print(f"sent {len(datasets) - failures}/{len(datasets)}")
    return 0 if failures == 0 else 1
