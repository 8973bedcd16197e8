"""The command line: ``fastscp serve|echo|send ...`` and ``store_scp`` (= serve)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__

# flag -> dotted config key; a flag left out does not override the file
_SERVE_FLAGS = {
    "port": "server.port",
    "ae_title": "server.ae_title",
    "storage_dir": "storage.directory",
    "index_db": "database.path",
    "naming": "storage.naming",
    "template": "storage.template",
    "duplicates": "storage.duplicates",
    "durability": "storage.durability",
    "accept": "accepted_sop_classes",
    "transfer_syntaxes": "accepted_transfer_syntaxes",
    "bind": "server.bind_address",
    "max_pdu": "server.max_pdu",
    "max_associations": "server.max_associations",
    "artim_timeout": "server.artim_timeout",
    "idle_timeout": "server.idle_timeout",
    "dimse_timeout": "server.dimse_timeout",
    "shutdown_grace": "server.shutdown_grace",
    "busy_poll_us": "server.busy_poll_us",
    "status_port": "status.port",
    "log_level": "logging.level",
    "log_format": "logging.format",
    "log_file": "logging.file",
    "exec_on_reception": "hooks.on_instance",
    "exec_on_study": "hooks.on_study_complete",
    "study_timeout": "hooks.study_timeout",
    "hook_timeout": "hooks.timeout",
    "hook_workers": "hooks.workers",
}


def _port_or_absent(value: str) -> object:
    # argparse runs `type` on an absent optional positional's default too;
    # SUPPRESS must come back as the same object so it stays absent.
    return value if value is argparse.SUPPRESS else int(value)


_port_or_absent.__name__ = "port"  # argparse names it in "invalid port value"


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    p.add_argument("port", nargs="?", type=_port_or_absent, default=S, help="TCP port to listen on (default 11112)")
    p.add_argument("ae_title", nargs="?", default=S, help="our AE title (default FASTSCP)")
    p.add_argument("--config", help="YAML configuration file (flags override it)")
    p.add_argument("--storage-dir", default=S, help="where received instances are stored (default ./received)")
    p.add_argument("--index-db", default=S, help="DuckDB index file (default ./pacs.db)")
    p.add_argument("--naming", default=S, help="hierarchical (default) | flat | date-based | physician | template")
    p.add_argument("--template", default=S, help="path pattern for --naming template")
    p.add_argument("--duplicates", default=S, help="ignore (default) | reject | overwrite | keep-both")
    p.add_argument("--durability", default=S, help="none (default) | fsync")
    p.add_argument("--accept", default=S, help='accepted SOP classes, e.g. "CT,MR,US" (default all)')
    p.add_argument("--transfer-syntaxes", default=S,
                   help="accepted transfer syntaxes: all (default), uncompressed, lossless, ...")
    p.add_argument("--bind", default=S, help="address to listen on (default 0.0.0.0)")
    p.add_argument("--max-pdu", type=int, default=S, help="largest P-DATA PDU we accept and advertise (default 131072)")
    p.add_argument("--max-associations", type=int, default=S, help="concurrent associations (default 10)")
    p.add_argument("--no-called-ae-check", action="store_true", help="accept any called AE title")
    p.add_argument("--artim-timeout", type=float, default=S,
                   help="seconds to wait for A-ASSOCIATE-RQ / transport close (default 30)")
    p.add_argument("--idle-timeout", type=float, default=S, help="abort an association silent this long (default 60)")
    p.add_argument("--dimse-timeout", type=float, default=S,
                   help="abort when a started message stalls this long (default 60)")
    p.add_argument("--shutdown-grace", type=float, default=S,
                   help="seconds running associations get on SIGTERM (default 10)")
    p.add_argument("--busy-poll-us", type=int, default=S,
                   help="microseconds to poll after each read while one association is open (default 1000; 0 = never)")
    p.add_argument("--status-port", type=int, default=S, help="status HTTP port (default 8042, 0 = off)")
    p.add_argument("--log-level", default=S, type=str.lower, choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default=S, choices=["text", "json"], help="console log form (default text)")
    p.add_argument("--log-file", default=S, metavar="FILE",
                   help="rotating log file, JSON lines (connection records and the rest)")
    p.add_argument("--exec-on-reception", default=S, metavar="COMMAND",
                   help='run per stored instance, e.g. "/usr/local/bin/fwd {path} {calling_ae}" '
                        '(split like a shell line, never run by one)')
    p.add_argument("--exec-on-study", default=S, metavar="COMMAND",
                   help='run per completed study, e.g. "/usr/local/bin/done {study_dir} {study_uid}"')
    p.add_argument("--study-timeout", type=float, default=S,
                   help="seconds without a new instance before a study is complete (default 60)")
    p.add_argument("--complete-on-release", action="store_true",
                   help="also complete a study when its association is released")
    p.add_argument("--hook-timeout", type=float, default=S,
                   help="seconds a hook may run before it is killed (default 300)")
    p.add_argument("--hook-workers", type=int, default=S, help="hooks run at the same time (default 2)")
    p.set_defaults(func=_serve)


def serve_overrides(args: argparse.Namespace) -> dict[str, object]:
    overrides: dict[str, object] = {
        key: getattr(args, flag) for flag, key in _SERVE_FLAGS.items() if hasattr(args, flag)}
    if getattr(args, "no_called_ae_check", False):
        overrides["server.check_called_ae"] = False
    if getattr(args, "complete_on_release", False):
        overrides["hooks.complete_on_release"] = True
    return overrides


def _serve(args: argparse.Namespace) -> int:
    from .app import StartError, run_blocking
    from .config import ConfigError

    config = args.config
    if config is None and os.path.isfile("config.yaml"):
        config = "config.yaml"  # `fastscp serve` with no arguments: ./config.yaml if present, else the defaults
    try:
        run_blocking(config, serve_overrides(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. a naming template the scheme rejects
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StartError:  # already logged, on the console and in the log file
        return 1
    return 0


def _setup_logging(level: str) -> None:
    """The client commands' console log: the serve log's text form, with a
    peer's strings escaped the same way (monitor/logsetup.py)."""
    from .monitor.logsetup import SafeTextFormatter

    console = logging.StreamHandler()
    console.setFormatter(SafeTextFormatter())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[console])


# the commands after serve, in build_parser's order
_OTHER_COMMANDS = ("echo", "send", "config", "query", "stats", "reindex", "status", "scan-sheet", "convert", "tags")


def build_parser(*, serve_only: bool = False) -> argparse.ArgumentParser:
    """Every command's parser, or with ``serve_only`` that of ``serve``
    alone: the other commands' modules (the clients, the catalog and
    configuration commands, the terminal view, the pipeline tools) are then
    not imported, about 0.5 MB of a receiver's memory (issue 23)."""
    parser = argparse.ArgumentParser(prog="fastscp", description="fastscp: a fast DICOM Storage SCP")
    parser.add_argument("--version", action="version", version=f"fastscp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_arguments(sub.add_parser("serve", help="run the receiver"))
    if serve_only:
        # the others by name only, so that an error names them as the whole
        # parser's usage does (a test checks the names against it)
        for name in _OTHER_COMMANDS:
            sub.add_parser(name)
        return parser
    from .cli_catalog import register as register_catalog
    from .cli_config import register as register_config
    from .scu import commands as scu_commands

    scu_commands.register(sub)
    register_config(sub)
    register_catalog(sub)
    from .monitor.terminal import register as register_status

    register_status(sub)
    from .pipeline import convert, scansheet, tags

    scansheet.register(sub)
    convert.register(sub)
    tags.register(sub)
    return parser


def parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for ``argv``: ``serve``'s alone when it is the command
    (it parses ``fastscp serve ...`` as the whole one does), else all."""
    return build_parser(serve_only=bool(argv) and argv[0] == "serve")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = parser_for(argv).parse_args(argv)
    _setup_logging(getattr(args, "log_level", "info"))
    return int(args.func(args) or 0)


def store_scp_main(argv: list[str] | None = None) -> int:
    """``store_scp PORT AE_TITLE --storage-dir DIR``: the guide's command, same as ``fastscp serve``."""
    parser = argparse.ArgumentParser(prog="store_scp", description="fastscp receiver (same as `fastscp serve`)")
    _add_serve_arguments(parser)
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "log_level", "info"))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
