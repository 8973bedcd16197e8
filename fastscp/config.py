"""Configuration: YAML file -> frozen dataclasses, every error names its key.

How it works: the file is parsed with ``yaml.compose`` (nodes, not Python
objects) so every value keeps its line number. Command-line overrides (dotted
keys such as ``server.port``) are grafted onto that tree, then one walk over
the dataclass schema below converts and checks each value: each kind of type
(bool, int, size, float, str, Literal, ``X | None``, tuple, nested section)
has its own small converter, found in ``_CONVERTERS``. Missing keys take
the dataclass defaults, so the merge order is defaults < file < overrides.
Unknown keys, wrong types and impossible values raise ``ConfigError`` with
the dotted key and the line (``config.yaml, line 3: server.port: ...``).
The walk goes on past a bad value (the key keeps its default meanwhile), so
one ``ConfigError`` carries every problem of the file in ``problems``, in
file order; its own text is the first one's. A YAML syntax error or a
duplicate key stops the parse at once.

Scalars for string fields are taken as written, so ``ae_title: NO`` or
``ae_title: 1234`` stay strings instead of YAML 1.1 booleans and numbers.

The repository's ``config.yaml`` documents every key with its default; a test
checks it loads equal to ``Config()`` and that it names every key.
The DICOM-facing limits follow PS3.8 (AE titles: PS3.5 AE VR, 16 characters;
PDU sizes: PS3.8 9.3.1 / D.1; ARTIM: PS3.8 9.1.5).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shlex
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

# yaml is imported where a file (or a YAML-read override) is parsed: a
# receiver started with flags alone never needs it (about 0.9 MB, issue 23)
if TYPE_CHECKING:
    import yaml
    from _typeshed import DataclassInstance

__all__ = [
    "AccessConfig",
    "AccessEntry",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "HooksConfig",
    "LoggingConfig",
    "QueryRetrieveConfig",
    "RemoteAE",
    "ServerConfig",
    "StatusConfig",
    "StorageConfig",
    "TlsConfig",
    "config_to_dict",
    "dump_config",
    "load_config",
    "parse_config_text",
    "parse_set_overrides",
]

NAMING_SCHEMES = ("hierarchical", "flat", "date-based", "physician", "template")
DUPLICATE_POLICIES = ("ignore", "reject", "overwrite", "keep-both")
AE_COMPARISONS = ("strict", "case-insensitive")

Check = Callable[[Any], "str | None"]


class ConfigError(ValueError):
    """A configuration problem, located: ``key`` is the dotted key
    ("server.port", "access.allowed_calling_aes[1].hosts[0]"), ``line`` the
    1-based line in ``source`` (None for command-line overrides or defaults).
    ``problems`` is every problem found, this one first (``more`` gives the
    others); the text of the error is this one's, with a count of the rest."""

    def __init__(self, message: str, key: str | None = None, line: int | None = None,
                 source: str | None = None, more: Sequence[ConfigError] = ()) -> None:
        self.message = message
        self.key = key
        self.line = line
        self.source = source
        self.problems: tuple[ConfigError, ...] = (self, *more)
        text = self._format()
        if more:
            text += f" (and {len(more)} more: `fastscp config check` lists them all)"
        super().__init__(text)

    def lines(self) -> list[str]:
        """One located line per problem."""
        return [p._format() for p in self.problems]

    def _format(self) -> str:
        where = self.source or "configuration"
        if self.line is not None:
            where += f", line {self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


_Scalar = Literal["csv", "argv", "size"]


@dataclass(frozen=True, slots=True)
class _Rules:
    """What a schema field asks of its value beyond its type (see ``_f``)."""

    check: Check | None = None
    item_check: Check | None = None
    scalar: _Scalar | None = None


_NO_RULES = _Rules()


def _f(default: Any = dataclasses.MISSING, doc: str = "", *, check: Check | None = None,
       item_check: Check | None = None, scalar: _Scalar | None = None) -> Any:
    """A schema field. ``check`` validates the converted value, ``item_check``
    each element of a list; ``scalar`` says how a lone string becomes a list
    ("csv": split on commas, "argv": shlex split) or a number ("size")."""
    return field(default=default, metadata={"doc": doc, "rules": _Rules(check, item_check, scalar)})


# --- value checks (return an error message or None) -------------------------

def _between(lo: float, hi: float | None = None, what: str = "") -> Check:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo} to {hi}" if hi is not None else f"at least {lo}"
            return f"{value} is out of range ({what + ': ' if what else ''}{bound})"
        return None
    return check


def _positive(value: Any) -> str | None:
    if value is not None and value <= 0:
        return f"{value} must be greater than 0"
    return None


def check_ae_title(value: Any) -> str | None:
    """PS3.5 AE VR: 1-16 characters of the default repertoire, no backslash
    or control characters; leading/trailing spaces are not significant."""
    if value is None:
        return None
    text = str(value).strip(" ")
    if not text:
        return "an AE title cannot be empty"
    if len(text) > 16:
        return f"{text!r} is longer than 16 characters (PS3.5 AE)"
    if not text.isascii() or any(c == "\\" or ord(c) < 32 or ord(c) == 127 for c in text):
        return (f"{text!r} has characters not allowed in an AE title "
                "(PS3.5 AE: ASCII, no backslash or control characters)")
    return None


_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$)({_LABEL})(\.{_LABEL})*\.?$")


def check_host(value: Any) -> str | None:
    """An IP address, a CIDR network or a host name."""
    text = str(value).strip()
    if "/" in text:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            return f"{text!r} is not a valid network ({exc})"
        return None
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    if _HOSTNAME_RE.match(text) and not text.replace(".", "").isdigit():
        return None
    return f"{text!r} is not an IP address, CIDR network or host name"


def _check_bind(value: Any) -> str | None:
    if "/" in str(value):
        return f"{value!r}: give an address or host name, not a network"
    return check_host(value)


def _check_sop_item(value: Any) -> str | None:
    from .sopclasses import MODALITY_SHORTHANDS, expand_accept

    if str(value).strip().upper() in MODALITY_SHORTHANDS or str(value).strip().lower() == "all":
        return None  # known without loading pydicom's dictionaries
    try:
        expand_accept([value])
    except ValueError as exc:
        return str(exc)
    return None


def _check_ts_item(value: Any) -> str | None:
    from .sopclasses import TRANSFER_SYNTAX_GROUPS, expand_transfer_syntaxes

    if str(value).strip().lower() in TRANSFER_SYNTAX_GROUPS:
        return None
    try:
        expand_transfer_syntaxes([value])
    except ValueError as exc:
        return str(exc)
    return None


def _non_empty(value: Any) -> str | None:
    return "the list cannot be empty" if len(value) == 0 else None


def _check_env_name(value: Any) -> str | None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(value)):
        return f"{value!r} is not an environment variable name"
    return None


def _check_template(value: Any) -> str | None:
    if value is not None and "{" not in value:
        return f"{value!r} has no {{placeholder}}: every instance would get the same path"
    return None


def parse_size(text: str) -> int:
    """"512MB" -> 512000000, "2 GiB" -> 2147483648, "1000" -> 1000."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a size (a number of bytes, or e.g. 500MB, 2GiB)")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    if unit == "B":
        scale = 1
    else:
        power = "KMGT".index(unit[0]) + 1
        scale = (1024 if "I" in unit else 1000) ** power
    return int(number * scale)


# --- the schema --------------------------------------------------------------

@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = _f(False, "serve DICOM over TLS on a second port")
    port: int = _f(2762, "TLS port (2762 is IANA's dicom-tls)", check=_between(0, 65535, "TCP port"))
    certificate: str | None = _f(None, "PEM certificate chain of this server")
    key: str | None = _f(None, "PEM private key (unencrypted)")
    ca_bundle: str | None = _f(None, "PEM CA certificates trusted for client certificates")
    require_client_certificate: bool = _f(False, "refuse clients without a certificate signed by ca_bundle")


@dataclass(frozen=True)
class ServerConfig:
    port: int = _f(11112, "DICOM port; 0 picks a free port", check=_between(0, 65535, "TCP port"))
    ae_title: str = _f("FASTSCP", "this receiver's AE title", check=check_ae_title)
    bind_address: str = _f("0.0.0.0", "address to listen on ('::' for IPv6)", check=_check_bind)
    max_associations: int = _f(10, "concurrent associations in total", check=_between(1, 100000))
    max_associations_per_ae: int | None = _f(
        None, "concurrent associations per calling AE title; null = half of max_associations (at least 1)",
        check=_between(1, 100000))
    reserved_for_new_ae: int = _f(
        1, "association slots only a calling AE title holding none may take; 0 = none", check=_between(0, 100000))
    min_transfer_rate: int = _f(
        1024, "bytes/s a message being received must average over transfer_rate_window; 0 = no check",
        check=_between(0), scalar="size")
    transfer_rate_window: float = _f(60.0, "seconds over which min_transfer_rate is measured", check=_positive)
    max_unassociated: int = _f(
        64, "connections that have not yet sent A-ASSOCIATE-RQ; the oldest is closed for a new one",
        check=_between(1, 100000))
    max_pdu: int = _f(131072, "largest PDU we receive, announced to peers (PS3.8 D.1)",
                      check=_between(4096, 0xFFFFFFFF, "bytes"))
    artim_timeout: float = _f(30.0, "ARTIM timer: seconds for a peer to send A-ASSOCIATE-RQ after connecting",
                              check=_positive)
    acse_timeout: float | None = _f(30.0, "seconds to wait for an association/release answer", check=_positive)
    dimse_timeout: float | None = _f(60.0, "seconds to wait for the rest of a DIMSE message once started",
                                     check=_positive)
    idle_timeout: float | None = _f(60.0, "seconds an association may stay silent before it is aborted",
                                    check=_positive)
    check_called_ae: bool = _f(True, "reject associations not addressed to ae_title")
    called_ae_comparison: Literal["strict", "case-insensitive"] = _f(
        "strict", "strict: exact after trimming spaces; case-insensitive: also ignore case")
    shutdown_grace: float = _f(10.0, "seconds running associations get to finish on shutdown", check=_between(0, 86400))
    busy_poll_us: int = _f(
        1000, "microseconds to poll the socket after a command or an answer before sleeping, while one association "
              "is open; 0 = never",
        check=_between(0, 10000, "microseconds"))
    release_start_up_pages: bool = _f(
        True, "once listening, drop from memory the read-only library pages start-up touched (they come back from "
              "the page cache if used); false = leave them mapped")
    tls: TlsConfig = _f(TlsConfig(), "DICOM TLS (PS3.15 BCP 195 profile)")


@dataclass(frozen=True)
class StorageConfig:
    directory: str = _f("./received", "where instances are stored")
    naming: Literal["hierarchical", "flat", "date-based", "physician", "template"] = _f(
        "hierarchical", "file layout")
    template: str | None = _f(None, "path pattern for naming: template", check=_check_template)
    accounts_root: str | None = _f(
        None, "folder holding the per-physician accounts for naming: physician (default: directory)")
    accounts: tuple[str, ...] = _f(
        (), "explicit account names for naming: physician (default: folders under accounts_root)")
    duplicates: Literal["ignore", "reject", "overwrite", "keep-both"] = _f(
        "ignore", "what to do with a second instance of the same SOP Instance UID")
    durability: Literal["none", "fsync"] = _f("none", "fsync: success is answered only once the file is on disk")
    max_instance_size: int | None = _f(None, "largest dataset accepted (bytes, or 500MB, 2GiB); null = no limit",
                                       check=_between(1), scalar="size")
    min_free_space: int | None = _f(
        None, "free space kept on the volume: instances that would cross it are refused (0xA700), also while "
              "they stream in; null = 5% of the volume, at most 1 GiB; 0 = no reserve",
        check=_between(0), scalar="size")
    max_incoming: int | None = _f(
        4 * 1024**3, "bytes of unfinished instances in .incoming/ over all associations; past it an instance "
                     "sharing that space is refused (0xA700); null = no bound", check=_between(1), scalar="size")
    low_free_space_warning: int | None = _f(None, "warn when free space drops below this",
                                            check=_between(0), scalar="size")


@dataclass(frozen=True)
class DatabaseConfig:
    path: str | None = _f("./pacs.db", "DuckDB index file; null = no index")
    wal_mode: bool = _f(
        True, "accepted for the guide; DuckDB always journals to <path>.wal (see docs/configuration.md)")
    batch_size: int = _f(5000, "rows per insert batch", check=_between(1, 1000000))
    flush_interval: float = _f(5.0, "longest a row waits for its batch while rows keep coming (seconds)",
                               check=_positive)
    flush_quiet: float = _f(0.25, "a partial batch is written once no row has come for this long (seconds)",
                            check=_positive)
    quiet_checkpoint: float = _f(
        10.0, "after this long with nothing to write, fold a WAL of 32 MiB or more into the index file, which "
              "lets go of the memory its rows held (seconds); 0 = only at DuckDB's own 256 MB",
        check=_between(0, 86400))
    memory_limit: int | None = _f(
        64 * 1024 * 1024, "DuckDB's memory_limit for the index in the server: its cache of index blocks and "
        "its queries' working memory (a query needing more spills to <path>.tmp/); null = DuckDB's default, 80% "
        "of RAM", check=_between(32 * 1024 * 1024), scalar="size")


@dataclass(frozen=True)
class AccessEntry:
    ae_title: str = _f(doc="calling AE title allowed to connect ('*' = any)",
                       check=lambda v: None if v == "*" else check_ae_title(v))
    hosts: tuple[str, ...] = _f((), "host names, IPs or CIDR networks it may connect from; empty = anywhere",
                                item_check=check_host, scalar="csv")


@dataclass(frozen=True)
class QueryRetrieveConfig:
    max_find_matches: int | None = _f(
        100000, "a C-FIND matching more is answered 0xA700 (Refused: Out of Resources) after this many "
        "responses; null = no limit", check=_between(1))
    max_retrieve_instances: int | None = _f(
        100000, "a C-MOVE or C-GET naming more instances is refused 0xA701 (Refused: Out of Resources, "
        "unable to calculate number of matches) before any sub-operation; null = no limit", check=_between(1))
    pending_interval: float = _f(
        1.0, "seconds between the Pending responses of a C-MOVE or C-GET (PS3.4 C.4.2.3.1, C.4.3.3.1 make "
        "them optional): one goes out after a sub-operation once this long has passed since the "
        "sub-operations began or the last one; 0 = after every sub-operation", check=_between(0, 3600, "seconds"))


@dataclass(frozen=True)
class RemoteAE:
    ae_title: str = _f(doc="the remote application entity's AE title", check=check_ae_title)
    host: str = _f(doc="its host name or IP address", check=check_host)
    port: int = _f(104, "its DICOM port", check=_between(1, 65535, "TCP port"))
    tls: bool = _f(False, "connect to it with DICOM TLS (server.tls's CA bundle and certificate are used)")


@dataclass(frozen=True)
class AccessConfig:
    allowed_calling_aes: tuple[AccessEntry, ...] = _f(
        (), "calling AE whitelist; empty = every calling AE is accepted")
    calling_ae_comparison: Literal["strict", "case-insensitive"] = _f(
        "strict", "how calling AE titles are compared with the whitelist")


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = _f("info", "log level")
    format: Literal["text", "json"] = _f("text", "console log format")
    file: str | None = _f(None, "connection log file (JSON lines, rotated); null = console only")
    max_bytes: int = _f(10 * 1024 * 1024, "rotate the log file at this size", check=_between(1024), scalar="size")
    backup_count: int = _f(5, "rotated files kept", check=_between(0, 1000))


@dataclass(frozen=True)
class StatusConfig:
    bind_address: str = _f("127.0.0.1", "status HTTP endpoint address", check=_check_bind)
    port: int = _f(8042, "status HTTP port; 0 = no status endpoint", check=_between(0, 65535, "TCP port"))
    token: str | None = _f(None, "requests for index data need 'Authorization: Bearer <token>'; "
                                 "null = a token generated at first start, kept in <storage>/.status/token (0600)")
    auth: bool = _f(True, "require the token; false = anyone who reaches the port reads the index")
    allowed_hosts: tuple[str, ...] = _f((), "host names (besides localhost and IP addresses) accepted in the "
                                             "Host header, against DNS rebinding; '*' = any")
    query_timeout: float = _f(30.0, "seconds a /query may run before it is stopped", check=_positive)
    query_max_bytes: int = _f(64 * 1024 * 1024, "largest /query result sent, in every format",
                              check=_between(1024), scalar="size")


@dataclass(frozen=True)
class HooksConfig:
    on_instance: tuple[str, ...] = _f((), "command (argv list, no shell) run for each stored instance", scalar="argv")
    on_study_complete: tuple[str, ...] = _f((), "command run when a study is complete", scalar="argv")
    study_timeout: float = _f(60.0, "seconds without a new instance after which a study is complete", check=_positive)
    complete_on_release: bool = _f(False, "also complete a study when its association is released")
    scan_sheets: bool = _f(True, "write scan_sheet.html and .png for each completed study")
    timeout: float = _f(300.0, "seconds a hook may run before it is killed", check=_positive)
    workers: int = _f(2, "hooks run at the same time", check=_between(1, 256))
    pass_env: tuple[str, ...] = _f(
        (), "server environment variables hooks also get (besides PATH, HOME, USER, LOGNAME, LANG, LC_ALL, "
        "LC_CTYPE, TZ, TMPDIR and FASTSCP_*)", item_check=_check_env_name, scalar="csv")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = _f(ServerConfig(), "network, limits and timeouts")
    storage: StorageConfig = _f(StorageConfig(), "where and how instances are written")
    database: DatabaseConfig = _f(DatabaseConfig(), "the DuckDB index")
    accepted_sop_classes: tuple[str, ...] = _f(
        ("all",), "storage SOP classes accepted: all, modality shorthands (CT, MR, US ...), names or UIDs",
        check=_non_empty, item_check=_check_sop_item, scalar="csv")
    accepted_transfer_syntaxes: tuple[str, ...] = _f(
        ("all",), "transfer syntaxes accepted: uncompressed, lossless, lossy, video, all, names or UIDs",
        check=_non_empty, item_check=_check_ts_item, scalar="csv")
    accept_unknown_sop_classes: bool = _f(False, "also accept SOP classes that are in no list (private ones)")
    access: AccessConfig = _f(AccessConfig(), "who may connect")
    logging: LoggingConfig = _f(LoggingConfig(), "logs")
    status: StatusConfig = _f(StatusConfig(), "live status endpoint")
    hooks: HooksConfig = _f(HooksConfig(), "commands run after reception")
    query_retrieve: QueryRetrieveConfig = _f(QueryRetrieveConfig(), "C-FIND, C-MOVE and C-GET")
    remote_aes: tuple[RemoteAE, ...] = _f(
        (), "AEs we connect to: C-MOVE destinations and Storage Commitment requesters (by AE title)")

    def sop_class_uids(self) -> frozenset[str]:
        """The accepted storage SOP class UIDs (expanded)."""
        from .sopclasses import expand_accept

        return expand_accept(self.accepted_sop_classes)

    def transfer_syntax_uids(self) -> frozenset[str]:
        """The accepted transfer syntax UIDs (expanded)."""
        from .sopclasses import expand_transfer_syntaxes

        return expand_transfer_syntaxes(self.accepted_transfer_syntaxes)


# --- parsed input: values with their position ---------------------------------

@dataclass(slots=True)
class _Node:
    value: object  # dict[str, _Entry] | list[_Node] | a scalar
    line: int | None
    raw: str | None = None  # scalar text as written (YAML), for string fields
    override: bool = False


@dataclass(slots=True)
class _Entry:
    node: _Node
    key_line: int | None


class _Invalid(Exception):
    """A value that could not be built; its problems are already reported."""


def _related(a: str, b: str) -> bool:
    """One dotted key is the other or lies under it."""
    return a == b or a.startswith((b + ".", b + "[")) or b.startswith((a + ".", a + "["))


class _Context:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[str, int | None] = {}  # dotted key -> line it was written on
        self.overridden: set[str] = set()  # dotted keys set from the command line
        self.problems: list[ConfigError] = []  # reported so far; the walk goes on

    def error(self, message: str, key: str, line: int | None) -> ConfigError:
        from_cli = line is None and any(
            key == o or key.startswith((o + ".", o + "[")) for o in self.overridden)
        return ConfigError(message, key, line, "command line" if from_cli else self.source)

    def report(self, problem: ConfigError) -> None:
        self.problems.append(problem)

    def failed(self, key: str) -> bool:
        """A problem was reported at ``key``, under it or above it."""
        return any(p.key is not None and _related(p.key, key) for p in self.problems)

    def rule_broken(self, message: str, key: str, *uses: str) -> None:
        """Report a rule between keys (``key`` and the keys it ``uses``) as
        broken, unless one of them was bad: it holds its default, not what
        was written. The problem points at ``key`` if it was written, else
        at its closest written parent."""
        if any(self.failed(k) for k in (key, *uses)):
            return
        probe = key
        while probe and probe not in self.lines:
            probe = probe.rpartition(".")[0]
        self.report(self.error(message, key, self.lines.get(probe)))

    def raise_problems(self) -> None:
        """Raise every problem reported, in file order (command line last)."""
        if not self.problems:
            return
        first, *more = sorted(self.problems, key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(first.message, first.key, first.line, first.source, more)


_SCALAR_LOADER: yaml.SafeLoader | None = None


def _yaml_loader() -> yaml.SafeLoader:
    import yaml

    global _SCALAR_LOADER
    if _SCALAR_LOADER is None:
        _SCALAR_LOADER = yaml.SafeLoader("")
    return _SCALAR_LOADER


def _from_yaml(node: yaml.Node, source: str) -> _Node:
    import yaml

    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader = _yaml_loader()
        loader.flatten_mapping(node)  # resolve "<<" merge keys
        entries: dict[str, _Entry] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("keys must be plain names", None, key_line, source)
            key = str(key_node.value)
            if key in entries:
                raise ConfigError(f"duplicate key {key!r} (first on line {entries[key].key_line})",
                                  key, key_line, source)
            entries[key] = _Entry(_from_yaml(value_node, source), key_line)
        return _Node(entries, line)
    if isinstance(node, yaml.SequenceNode):
        return _Node([_from_yaml(item, source) for item in node.value], line)
    assert isinstance(node, yaml.ScalarNode)
    try:
        value = _yaml_loader().construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad value: {exc}", None, line, source) from None
    return _Node(value, line, raw=str(node.value) if value is not None else None)


def _from_python(value: Any) -> _Node:
    """An override value as a node (no line: it came from the command line)."""
    if isinstance(value, Mapping):
        return _Node({str(k): _Entry(_from_python(v), None) for k, v in value.items()}, None, override=True)
    if isinstance(value, (list, tuple)):
        return _Node([_from_python(v) for v in value], None, override=True)
    return _Node(value, None, override=True)


# --- conversion: one converter per kind of schema type -------------------------
#
# _convert finds the converter for a schema type in _CONVERTERS (keyed by the
# type's typing origin, else the type itself; nested dataclasses apart) and
# calls it with the node, its value and the dotted key. A converter returns the
# value, raises ConfigError for its own problem, or raises _Invalid when the
# problems inside it (list items, section keys) were already reported.

# A type from the schema's annotations: int, str | None, Literal[...], tuple[str, ...], a dataclass.
_Schema = object
_Converter = Callable[[_Schema, _Node, object, str, _Context, _Rules], object]
_UNIONS = (typing.Union, types.UnionType)
_HINTS: dict[type, dict[str, _Schema]] = {}


def _hints(cls: type) -> dict[str, _Schema]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_name(tp: _Schema) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in _UNIONS:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping of keys"
    names: dict[_Schema, str] = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, str(tp))


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"{value!r} ({type(value).__name__})"


def _wrong(tp: _Schema, value: object, key: str, line: int | None, ctx: _Context) -> ConfigError:
    return ctx.error(f"expected {_type_name(tp)}, got {_describe(value)}", key, line)


def _convert(tp: _Schema, node: _Node, key: str, ctx: _Context, rules: _Rules = _NO_RULES) -> object:
    """``node`` as a value of ``tp``, checked against nothing but its type."""
    ctx.lines[key] = node.line
    value = node.value
    if node.override and isinstance(value, str) and _reads_yaml(tp, rules):
        value = _override_value(tp, value, key, node.line, ctx)
    return _converter(tp, rules, key)(tp, node, value, key, ctx, rules)


def _converter(tp: _Schema, rules: _Rules, key: str) -> _Converter:
    if tp is int and rules.scalar == "size":
        return _convert_size
    origin = typing.get_origin(tp)
    found = _CONVERTERS.get(tp if origin is None else origin)
    if found is not None:
        return found
    if dataclasses.is_dataclass(tp):
        return _convert_section
    raise TypeError(f"unsupported schema type {tp!r} at {key}")


def _reads_yaml(tp: _Schema, rules: _Rules) -> bool:
    """Whether a command-line string for this type is read as YAML: not for a
    string (or string-or-null), a choice, nor a field with its own ``scalar``."""
    origin = typing.get_origin(tp)
    if tp is str or origin is Literal or rules.scalar is not None:
        return False
    return not (origin in _UNIONS and str in typing.get_args(tp))


def _override_value(tp: _Schema, text: str, key: str, line: int | None, ctx: _Context) -> object:
    """A command-line string read as YAML ("11113" -> 11113); a mapping or a
    list only where a list is expected."""
    import yaml

    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(parsed, (dict, list)):
        return parsed
    if typing.get_origin(tp) is not tuple:
        raise _wrong(tp, text, key, line, ctx)
    return _from_python(parsed).value


def _convert_union(tp: _Schema, node: _Node, value: object, key: str, ctx: _Context, rules: _Rules) -> object:
    """``X | None``: null, else an X from the same node."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None:
        return None
    if len(args) != 1:
        raise TypeError(f"unsupported union {tp}")
    return _convert(args[0], node, key, ctx, rules)


def _convert_section(tp: _Schema, node: _Node, value: object, key: str, ctx: _Context, rules: _Rules) -> object:
    """A nested dataclass, from the node as written (a bare scalar may fill _SCALAR_FIELD)."""
    assert isinstance(tp, type) and dataclasses.is_dataclass(tp)
    return _convert_dataclass(tp, node, key, ctx)


def _convert_literal(tp: _Schema, node: _Node, value: object, key: str, ctx: _Context, rules: _Rules) -> object:
    """One of fixed strings, as written; a near miss gets a "did you mean"."""
    choices = typing.get_args(tp)
    text = node.raw if node.raw is not None else value
    if isinstance(text, str) and text in choices:
        return text
    hint = _did_you_mean(str(text), [str(c) for c in choices])
    raise ctx.error(f"{text!r} is not one of: {', '.join(choices)}{hint}", key, node.line)


def _convert_bool(tp: _Schema, node: _Node, value: object, key: str, ctx: _Context, rules: _Rules) -> object:
    if isinstance(value, bool):
        return value
    raise _wrong(tp, value, key, node.line, ctx)


def _convert_int(tp: _Schema, node: _Node, value: object, key: str, ctx: _Context, rules: _Rules) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _wrong(tp, value, key, node.line, ctx)


def _convert_size(tp: _Schema, node: _Node, value: object, key: str, ctx: _Context, rules: _Rules) -> object:
    """A number of bytes: an integer, or a string such as "500MB" or "2 GiB"."""
    if not isinstance(value, str):
        return _convert_int(tp, node, value, key, ctx, rules)
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ctx.error(str(exc), key, node.line) from None


def _convert_float(tp: _Schema, node: _Node, value: object, key: str, ctx: _Context, rules: _Rules) -> object:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise _wrong(tp, value, key, node.line, ctx)


def _convert_str(tp: _Schema, node: _Node, value: object, key: str, ctx: _Context, rules: _Rules) -> object:
    """Any scalar but null, as written in the file (``NO`` and ``1234`` stay strings)."""
    if isinstance(value, (dict, list)) or value is None:
        raise _wrong(tp, value, key, node.line, ctx)
    return node.raw if node.raw is not None else str(value)


def _convert_tuple(tp: _Schema, node: _Node, value: object, key: str, ctx: _Context, rules: _Rules) -> object:
    """A list (or a string split as ``rules.scalar`` says), item by item: every
    bad item is reported; then the list as a whole is _Invalid."""
    item_tp = typing.get_args(tp)[0]
    out: list[object] = []
    complete = True
    for i, item in enumerate(_list_items(tp, node, value, key, ctx, rules.scalar)):
        try:
            out.append(_convert_item(item_tp, item, f"{key}[{i}]", ctx, rules.item_check))
        except ConfigError as problem:
            ctx.report(problem)
            complete = False
        except _Invalid:
            complete = False
    if not complete:
        raise _Invalid
    return tuple(out)


def _list_items(tp: _Schema, node: _Node, value: object, key: str, ctx: _Context,
                scalar: _Scalar | None) -> list[_Node]:
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or scalar not in ("csv", "argv"):
        raise _wrong(tp, value, key, node.line, ctx)
    if scalar == "csv":
        parts = [p.strip() for p in value.split(",") if p.strip()]
    else:
        try:
            parts = shlex.split(value)
        except ValueError as exc:
            raise ctx.error(f"cannot split command {value!r}: {exc}", key, node.line) from None
    return [_Node(p, node.line, raw=p, override=node.override) for p in parts]


def _convert_item(tp: _Schema, item: _Node, key: str, ctx: _Context, check: Check | None) -> object:
    converted = _convert(tp, item, key, ctx)
    message = check(converted) if check is not None else None
    if message:
        raise ctx.error(message, key, item.line)
    return converted


_CONVERTERS: dict[_Schema, _Converter] = {
    typing.Union: _convert_union,
    types.UnionType: _convert_union,
    tuple: _convert_tuple,
    Literal: _convert_literal,
    bool: _convert_bool,
    int: _convert_int,
    float: _convert_float,
    str: _convert_str,
}


# --- sections: dataclasses, key by key ------------------------------------------

_Section = TypeVar("_Section", bound="DataclassInstance")


def _convert_dataclass(cls: type[_Section], node: _Node, key: str, ctx: _Context) -> _Section:
    """A section. Every unknown, missing or bad key is reported; a bad key
    keeps its default, and a section missing a required key is _Invalid."""
    entries = _section_entries(cls, node, key, ctx)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _report_unknown_keys(fields, entries, key, ctx)
    hints = _hints(cls)
    kwargs: dict[str, object] = {}
    complete = True
    for name, f in fields.items():
        try:
            value = _field_value(f, hints[name], entries.get(name), _join(key, name), node.line, ctx)
        except _Invalid:
            complete = complete and f.default is not dataclasses.MISSING
            continue
        if value is not _ABSENT:
            kwargs[name] = value
    if not complete:
        raise _Invalid
    return cls(**kwargs)


def _section_entries(cls: type, node: _Node, key: str, ctx: _Context) -> dict[str, _Entry]:
    entries = node.value
    if entries is None:  # "server:" with nothing under it
        return {}
    scalar_field = _SCALAR_FIELD.get(cls)
    if scalar_field and isinstance(entries, (str, int)):  # "- MODALITY1" for {ae_title: MODALITY1}
        return {scalar_field: _Entry(node, node.line)}
    if not isinstance(entries, dict):
        raise ctx.error(f"expected a mapping of keys, got {_describe(entries)}", key or "(top level)", node.line)
    return entries


def _did_you_mean(text: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the closest of ``choices``, or ''."""
    import difflib  # only for a bad value's suggestion

    close = difflib.get_close_matches(text, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _report_unknown_keys(fields: Mapping[str, object], entries: Mapping[str, _Entry], key: str,
                         ctx: _Context) -> None:
    for name, entry in entries.items():
        if name not in fields:
            hint = _did_you_mean(name, list(fields))
            valid = ", ".join(fields)
            ctx.report(ctx.error(f"unknown key{hint}; valid keys here: {valid}", _join(key, name), entry.key_line))


_ABSENT = object()  # a key not written: the dataclass default applies


def _field_value(f: dataclasses.Field[object], tp: _Schema, entry: _Entry | None, dotted: str,
                 section_line: int | None, ctx: _Context) -> object:
    """One key's value, converted and checked; _ABSENT if not written, _Invalid if bad."""
    if entry is None:
        if f.default is dataclasses.MISSING:
            ctx.report(ctx.error(f"missing required key {f.name!r}", dotted, section_line))
            raise _Invalid
        return _ABSENT
    rules: _Rules = f.metadata["rules"]
    try:
        value = _convert(tp, entry.node, dotted, ctx, rules)
        ctx.lines[dotted] = entry.key_line if entry.key_line is not None else entry.node.line
        message = rules.check(value) if rules.check is not None else None
        if message:
            raise ctx.error(message, dotted, ctx.lines[dotted])
    except ConfigError as problem:
        ctx.report(problem)
        raise _Invalid from None
    return value


# Classes that may be written as a bare scalar, filling this one field.
_SCALAR_FIELD: dict[type, str] = {AccessEntry: "ae_title"}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --- rules between keys ------------------------------------------------------------

def _cross_check(cfg: Config, ctx: _Context) -> None:
    """Rules that involve more than one key."""
    st = cfg.storage
    if st.naming == "template" and not st.template:
        ctx.rule_broken("naming: template needs storage.template "
                        "(e.g. '{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm')",
                        "storage.template", "storage.naming")
    if cfg.server.tls.enabled:
        _check_tls(cfg.server.tls, cfg.server.port, ctx)
    if cfg.status.port and cfg.status.port == cfg.server.port:
        ctx.rule_broken(f"port {cfg.status.port} is already the DICOM port", "status.port", "server.port")


def _check_tls(tls: TlsConfig, dicom_port: int, ctx: _Context) -> None:
    for name in ("certificate", "key"):
        if not getattr(tls, name):
            ctx.rule_broken(f"TLS is enabled: server.tls.{name} is required",
                            f"server.tls.{name}", "server.tls.enabled")
    if tls.require_client_certificate and not tls.ca_bundle:
        ctx.rule_broken("require_client_certificate needs server.tls.ca_bundle to verify clients against",
                        "server.tls.ca_bundle", "server.tls.require_client_certificate", "server.tls.enabled")
    for name in ("certificate", "key", "ca_bundle"):
        path = getattr(tls, name)
        if path and not os.path.isfile(path):
            ctx.rule_broken(f"file not found: {path}", f"server.tls.{name}")
    if tls.port == dicom_port and tls.port != 0:
        ctx.rule_broken(f"the TLS port {tls.port} is the plain DICOM port too", "server.tls.port", "server.port")


# --- entry points ----------------------------------------------------------------

def _graft(root: _Node, overrides: Mapping[str, Any], ctx: _Context) -> None:
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if not all(parts):
            raise ConfigError(f"bad override key {dotted!r}", dotted, None, "command line")
        node = root
        for depth, part in enumerate(parts):
            if not isinstance(node.value, dict):
                node.value = {}
            if depth == len(parts) - 1:
                node.value[part] = _Entry(_from_python(value), None)
            else:
                entry = node.value.get(part)
                if entry is None or not isinstance(entry.node.value, dict):
                    entry = _Entry(_Node({}, None, override=True), entry.key_line if entry else None)
                    node.value[part] = entry
                node = entry.node
        ctx.overridden.add(dotted)


def _compose(text: str, source: str) -> yaml.Node | None:
    import yaml

    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(f"not valid YAML: {exc.problem}", None, line, source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", None, None, source) from None


def parse_config_text(text: str, source: str = "<string>",
                      overrides: Mapping[str, Any] | None = None) -> Config:
    """Parse YAML text (and overrides) into a checked Config."""
    # blank text (load_config without a file) is no document, as yaml.compose says
    document = _compose(text, source) if text.strip() else None
    ctx = _Context(source)
    root = _from_yaml(document, source) if document is not None else _Node({}, 1)
    if not isinstance(root.value, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got {_describe(root.value)}",
                          None, root.line, source)
    if overrides:
        _graft(root, overrides, ctx)
    try:
        cfg: Config = _convert_dataclass(Config, root, "", ctx)
    except _Invalid:  # not with this schema (no required key at the top), but never a bare _Invalid
        ctx.raise_problems()
        raise
    _cross_check(cfg, ctx)
    ctx.raise_problems()
    return cfg


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults < the YAML file at ``path`` (if any) < ``overrides``.

    ``overrides`` maps dotted keys to values, e.g. ``{"server.port": 11113,
    "accepted_sop_classes": "CT,MR"}``; strings for non-string keys are read
    as YAML. Raises ConfigError naming the key and line on any problem.
    """
    if path is None:
        return parse_config_text("", "defaults", overrides)
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration: {exc.strerror}", None, None, source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", None, None, source) from None
    return parse_config_text(text, source, overrides)


def parse_set_overrides(items: list[str]) -> dict[str, str]:
    """``["server.port=11113", ...]`` (a ``--set`` option) -> overrides."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", None, None, "command line")
        out[key.strip()] = value
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dicts and lists, in schema order (for YAML/JSON output)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    result = plain(cfg)
    assert isinstance(result, dict)
    return result


def dump_config(cfg: Config, fmt: Literal["yaml", "json"] = "yaml") -> str:
    data = config_to_dict(cfg)
    if fmt == "json":
        import json

        return json.dumps(data, indent=2) + "\n"
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
