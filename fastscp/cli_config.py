"""``fastscp config check FILE`` and ``fastscp config defaults``: the command
line over ``config`` (above it and ``net.tls``, which ``config check`` uses
to try the TLS files, so that ``config`` itself imports nothing of the
project's network code)."""

from __future__ import annotations

import argparse
import sys

from .config import Config, ConfigError, dump_config, load_config, parse_set_overrides
from .net.tls import server_ssl_context


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        overrides = parse_set_overrides(getattr(args, "set", None) or [])
        cfg = load_config(args.file, overrides)
        if cfg.server.tls.enabled:
            try:
                server_ssl_context(cfg.server.tls)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot set up TLS: {exc}", "server.tls", None, args.file) from None
    except ConfigError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        if len(exc.problems) > 1:
            print(f"{len(exc.problems)} errors", file=sys.stderr)
        return 2
    sys.stdout.write(dump_config(cfg, args.format))
    return 0


def _cmd_defaults(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(Config(), args.format))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config check FILE`` and ``config defaults`` to an argparse
    subparsers object; each sets ``func(args) -> exit status``."""
    parser = subparsers.add_parser("config", help="validate and show configuration files")
    sub = parser.add_subparsers(dest="config_command", metavar="COMMAND")
    sub.required = True
    check = sub.add_parser("check", help="validate FILE and print the effective configuration")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--format", choices=("yaml", "json"), default="yaml")
    check.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a key, e.g. --set server.port=11113 (repeatable)")
    check.set_defaults(func=_cmd_check)
    defaults = sub.add_parser("defaults", help="print the built-in defaults")
    defaults.add_argument("--format", choices=("yaml", "json"), default="yaml")
    defaults.set_defaults(func=_cmd_defaults)
