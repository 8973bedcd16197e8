"""The command line: ``fastscp serve|echo|send ...`` and ``store_scp`` (= serve)."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("port", nargs="?", type=int, default=11112, help="TCP port to listen on (default 11112)")
    p.add_argument("ae_title", nargs="?", default="FASTSCP", help="our AE title (default FASTSCP)")
    p.add_argument("--storage-dir", default="./received", help="where received instances are stored (default ./received)")
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default all)")
    p.add_argument("--max-pdu", type=int, default=131072, help="largest P-DATA PDU we accept and advertise (default 131072)")
    p.add_argument("--max-associations", type=int, default=10, help="concurrent associations (default 10)")
    p.add_argument("--no-called-ae-check", action="store_true", help="accept any called AE title")
    p.add_argument("--artim-timeout", type=float, default=30.0, help="seconds to wait for A-ASSOCIATE-RQ / transport close")
    p.add_argument("--idle-timeout", type=float, default=60.0, help="abort an association silent this long (0: never)")
    p.add_argument("--shutdown-grace", type=float, default=30.0, help="seconds running associations get on SIGTERM")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from .app import ServeOptions, run_blocking

    if not 4096 <= args.max_pdu <= (1 << 26):
        print("--max-pdu must be between 4096 and 67108864", file=sys.stderr)
        return 2
    if not 1 <= len(args.ae_title) <= 16:
        print("AE title must be 1 to 16 characters", file=sys.stderr)
        return 2
    opts = ServeOptions(
        port=args.port, ae_title=args.ae_title, storage_dir=args.storage_dir, bind=args.bind,
        max_pdu=args.max_pdu, max_associations=args.max_associations,
        check_called_ae=not args.no_called_ae_check, artim_timeout=args.artim_timeout,
        idle_timeout=args.idle_timeout, shutdown_grace=args.shutdown_grace,
    )
    run_blocking(opts)
    return 0


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastscp", description="fastscp: a fast DICOM Storage SCP")
    parser.add_argument("--version", action="version", version=f"fastscp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_arguments(sub.add_parser("serve", help="run the receiver"))
    from .scu import commands as scu_commands

    scu_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "log_level", "INFO"))
    return int(args.func(args) or 0)


def store_scp_main(argv: list[str] | None = None) -> int:
    """``store_scp PORT AE_TITLE --storage-dir DIR``: the guide's command, same as ``fastscp serve``."""
    parser = argparse.ArgumentParser(prog="store_scp", description="fastscp receiver (same as `fastscp serve`)")
    _add_serve_arguments(parser)
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
