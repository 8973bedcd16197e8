"""Configuration: the guide's file, config.yaml, error locations, merge order, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from fastscp.cli_config import register
from fastscp.config import (
    AccessEntry,
    Config,
    ConfigError,
    dump_config,
    load_config,
    parse_config_text,
    parse_size,
)

REPO = Path(__file__).resolve().parent.parent

# The guide's example, exactly as the issue shows it (comment included).
GUIDE_YAML = """\
# store_scp.yaml
server:
  port: 11112
  ae_title: MY_PACS
  max_associations: 10
storage:
  directory: ./received
  naming: hierarchical # or flat, date-based
database:
  path: ./pacs.db
  wal_mode: true
accepted_sop_classes:
  - CT Image Storage
  - MR Image Storage
  - US Image Storage
"""

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def error_of(text: str, **overrides: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config_text(textwrap.dedent(text), "test.yaml", overrides or None)
    return info.value


def schema_keys(cls: type = Config, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}{f.name}"
        keys.add(dotted)
        default = f.default
        if dataclasses.is_dataclass(default):
            keys |= schema_keys(type(default), dotted + ".")
    return keys


def yaml_keys(node: yaml.Node, prefix: str = "") -> set[str]:
    keys = set()
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            dotted = f"{prefix}{k.value}"
            keys.add(dotted)
            keys |= yaml_keys(v, dotted + ".")
    return keys


# --- the guide and config.yaml ------------------------------------------------

def test_guide_file_loads_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "store_scp.yaml"
    path.write_text(GUIDE_YAML)
    cfg = load_config(path, {})
    assert cfg.server.port == 11112
    assert cfg.server.ae_title == "MY_PACS"
    assert cfg.server.max_associations == 10
    assert cfg.storage.directory == "./received"
    assert cfg.storage.naming == "hierarchical"
    assert cfg.database.path == "./pacs.db"
    assert cfg.database.wal_mode is True
    assert cfg.accepted_sop_classes == ("CT Image Storage", "MR Image Storage", "US Image Storage")
    assert cfg.sop_class_uids() == {CT_IMAGE, MR_IMAGE, US_IMAGE}
    # Keys the guide leaves out keep their defaults.
    assert cfg.server.max_pdu == 131072
    assert cfg.storage.duplicates == "ignore"


def test_repository_config_yaml_equals_defaults() -> None:
    assert load_config(REPO / "config.yaml") == Config()
    assert load_config(None) == Config()


def test_repository_config_yaml_names_every_key() -> None:
    document = yaml.compose((REPO / "config.yaml").read_text(), Loader=yaml.SafeLoader)
    assert document is not None
    assert yaml_keys(document) == schema_keys()


def test_docs_describe_every_key() -> None:
    docs = (REPO / "docs" / "configuration.md").read_text()
    missing = sorted(k for k in schema_keys() if f"`{k}`" not in docs)
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_dump_round_trips() -> None:
    allowed = ["A", {"ae_title": "B", "hosts": ["10.0.0.0/8"]}]
    cfg = parse_config_text(GUIDE_YAML, overrides={"access.allowed_calling_aes": allowed})
    assert parse_config_text(dump_config(cfg)) == cfg
    assert parse_config_text(dump_config(cfg, "json")) == cfg  # JSON is YAML


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]


# --- values ---------------------------------------------------------------------

def test_string_fields_keep_text_as_written() -> None:
    cfg = parse_config_text("server:\n  ae_title: NO\nstatus:\n  token: 0123\n")
    assert cfg.server.ae_title == "NO"  # not YAML 1.1's False
    assert cfg.status.token == "0123"  # not the integer 83 or 123


def test_integers_are_accepted_for_floats() -> None:
    assert parse_config_text("server:\n  idle_timeout: 5\n").server.idle_timeout == 5.0
    assert parse_config_text("server:\n  idle_timeout: null\n").server.idle_timeout is None


def test_sizes() -> None:
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("512MiB") == 512 * 1024 * 1024
    assert parse_size("1000") == 1000
    cfg = parse_config_text("storage:\n  max_instance_size: 1.5 GiB\n  min_free_space: 5000\n")
    assert cfg.storage.max_instance_size == int(1.5 * 1024**3)
    assert cfg.storage.min_free_space == 5000


def test_accept_as_comma_string_and_access_entries() -> None:
    cfg = parse_config_text(textwrap.dedent("""\
        accepted_sop_classes: CT, MR
        accepted_transfer_syntaxes: [lossless, JPEGBaseline8Bit]
        access:
          allowed_calling_aes:
            - STORESCU
            - ae_title: CT1
              hosts: [10.0.0.1, 192.168.0.0/16, ct1.example.org]
    """))
    assert cfg.accepted_sop_classes == ("CT", "MR")
    assert ENHANCED_CT in cfg.sop_class_uids()
    assert "1.2.840.10008.1.2.4.50" in cfg.transfer_syntax_uids()
    assert "1.2.840.10008.1.2.4.90" in cfg.transfer_syntax_uids()  # J2K lossless is in "lossless"
    assert cfg.access.allowed_calling_aes == (
        AccessEntry("STORESCU"),
        AccessEntry("CT1", ("10.0.0.1", "192.168.0.0/16", "ct1.example.org")),
    )


def test_hook_command_string_is_split_without_a_shell() -> None:
    cfg = parse_config_text("hooks:\n  on_instance: /bin/echo '{path}; rm -rf /' x\n")
    assert cfg.hooks.on_instance == ("/bin/echo", "{path}; rm -rf /", "x")


def test_yaml_merge_keys_and_anchors() -> None:
    cfg = parse_config_text(textwrap.dedent("""\
        status: &common
          port: 9000
        logging:
          level: debug
        server:
          port: 9001
    """))
    assert cfg.status.port == 9000 and cfg.logging.level == "debug"


# --- merge order ------------------------------------------------------------------

def test_overrides_beat_file_which_beats_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 11112\n  ae_title: FILE_AE\nstorage:\n  naming: flat\n")
    cfg = load_config(path, {"server.port": 11113, "storage.duplicates": "reject"})
    assert cfg.server.port == 11113  # override beats file
    assert cfg.server.ae_title == "FILE_AE"  # file beats default
    assert cfg.storage.naming == "flat"
    assert cfg.storage.duplicates == "reject"  # override of a key the file lacks
    assert cfg.server.max_associations == 10  # default


def test_override_strings_are_read_as_yaml_for_typed_keys() -> None:
    cfg = load_config(None, {"server.port": "104", "server.check_called_ae": "false",
                             "server.idle_timeout": "null", "accepted_sop_classes": "CT,MR,US"})
    assert cfg.server.port == 104
    assert cfg.server.check_called_ae is False
    assert cfg.server.idle_timeout is None
    assert cfg.accepted_sop_classes == ("CT", "MR", "US")


def test_override_replaces_a_whole_section_value() -> None:
    cfg = parse_config_text("server:\n  tls:\n    port: 3000\n", overrides={"server.tls.enabled": False})
    assert cfg.server.tls.port == 3000 and cfg.server.tls.enabled is False


def test_bad_override_names_the_command_line() -> None:
    err = error_of("server:\n  port: 1\n", **{"server.port": 70000})
    assert err.key == "server.port" and err.source == "command line" and err.line is None
    assert "70000" in str(err) and "command line" in str(err)
    err = error_of("", **{"server.prot": 1})
    assert err.key == "server.prot" and "unknown key" in str(err) and "'port'" in str(err)


# --- errors name the key and the line ----------------------------------------------

def test_unknown_key() -> None:
    err = error_of("""\
        server:
          port: 11112
          max_assocations: 5
    """)
    assert (err.key, err.line) == ("server.max_assocations", 3)
    assert "did you mean 'max_associations'" in str(err)
    assert str(err).startswith("test.yaml, line 3: server.max_assocations: unknown key")


def test_unknown_top_level_and_nested_keys() -> None:
    assert (error_of("serverr:\n  port: 1\n").key, error_of("serverr:\n  port: 1\n").line) == ("serverr", 1)
    err = error_of("server:\n  tls:\n    enabled: false\n    cert: a.pem\n")
    assert (err.key, err.line) == ("server.tls.cert", 4)


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("server:\n  port: eleven\n", "server.port", 2, "expected an integer"),
        ("server:\n  port: true\n", "server.port", 2, "expected an integer"),
        ("server:\n  check_called_ae: 'yes please'\n", "server.check_called_ae", 2, "true or false"),
        ("server:\n  ae_title: [A, B]\n", "server.ae_title", 2, "expected a string"),
        ("storage: ./received\n", "storage", 1, "expected a mapping"),
        ("accepted_sop_classes: {CT: 1}\n", "accepted_sop_classes", 1, "expected a list"),
        ("server:\n  artim_timeout: soon\n", "server.artim_timeout", 2, "expected a number"),
    ],
)
def test_wrong_types(text: str, key: str, line: int, words: str) -> None:
    err = error_of(text)
    assert (err.key, err.line) == (key, line)
    assert words in str(err) and f"line {line}" in str(err)


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("\n\nserver:\n  port: 70000\n", "server.port", 4, "out of range"),
        ("server:\n  max_pdu: 10\n", "server.max_pdu", 2, "out of range"),
        ("server:\n  max_associations: 0\n", "server.max_associations", 2, "out of range"),
        ("server:\n  idle_timeout: -1\n", "server.idle_timeout", 2, "greater than 0"),
        ("server:\n  ae_title: THIS_AE_TITLE_IS_TOO_LONG\n", "server.ae_title", 2, "16 characters"),
        ("server:\n  ae_title: 'A\\\\B'\n", "server.ae_title", 2, "not allowed"),
        ("storage:\n  naming: alphabetical\n", "storage.naming", 2, "hierarchical, flat, date-based"),
        ("storage:\n  duplicates: keep_both\n", "storage.duplicates", 2, "did you mean 'keep-both'"),
        ("storage:\n  max_instance_size: lots\n", "storage.max_instance_size", 2, "not a size"),
        ("server:\n  called_ae_comparison: fuzzy\n", "server.called_ae_comparison", 2, "strict"),
        ("accepted_sop_classes: []\n", "accepted_sop_classes", 1, "cannot be empty"),
        ("query_retrieve:\n  pending_interval: -0.5\n", "query_retrieve.pending_interval", 2, "out of range"),
        ("query_retrieve:\n  pending_interval: 7200\n", "query_retrieve.pending_interval", 2, "out of range"),
        ("query_retrieve:\n  pending_interval: often\n", "query_retrieve.pending_interval", 2, "number"),
    ],
)
def test_impossible_values(text: str, key: str, line: int, words: str) -> None:
    err = error_of(text)
    assert (err.key, err.line) == (key, line)
    assert words in str(err)


def test_bad_sop_class_shorthand_names_item_line_and_choices() -> None:
    err = error_of("""\
        accepted_sop_classes:
          - CT
          - MRI
          - US
    """)
    assert (err.key, err.line) == ("accepted_sop_classes[1]", 3)
    assert "'MRI'" in str(err)
    for choice in ("CT", "MR", "US", "SR", "all"):
        assert choice in err.message


def test_bad_sop_class_in_comma_string_and_bad_transfer_syntax() -> None:
    err = error_of("accepted_sop_classes: CT, XYZ\n")
    assert err.key == "accepted_sop_classes[1]" and err.line == 1 and "'XYZ'" in str(err)
    err = error_of("accepted_transfer_syntaxes:\n  - lossless\n  - JPEG 3000\n")
    assert (err.key, err.line) == ("accepted_transfer_syntaxes[1]", 3)
    assert "uncompressed" in str(err)


def test_access_entry_errors() -> None:
    err = error_of("""\
        access:
          allowed_calling_aes:
            - ae_title: CT1
              hosts: [10.0.0.1, 10.0.0.0/33]
    """)
    assert (err.key, err.line) == ("access.allowed_calling_aes[0].hosts[1]", 4)
    err = error_of("""\
        access:
          allowed_calling_aes:
            - OK_AE
            - hosts: [10.0.0.1]
    """)
    assert err.key == "access.allowed_calling_aes[1].ae_title" and err.line == 4
    assert "missing required key" in str(err)


def test_cross_key_rules() -> None:
    err = error_of("storage:\n  directory: x\n  naming: template\n")
    assert err.key == "storage.template" and err.line == 1  # the storage section
    err = error_of("server:\n  tls:\n    enabled: true\n")
    assert err.key == "server.tls.certificate" and err.line == 2
    err = error_of("server:\n  port: 8042\n")
    assert err.key == "status.port"


def test_tls_files_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    err = error_of(f"""\
        server:
          tls:
            enabled: true
            certificate: {cert}
            key: {tmp_path / 'missing.pem'}
    """)
    assert (err.key, err.line) == ("server.tls.key", 5) and "file not found" in str(err)


def test_duplicate_keys_and_bad_yaml() -> None:
    err = error_of("server:\n  port: 1\n  port: 2\n")
    assert (err.key, err.line) == ("port", 3) and "first on line 2" in str(err)
    err = error_of("server:\n  port: [1\n")
    assert err.line is not None and "not valid YAML" in str(err)
    err = error_of("- a\n- b\n")
    assert "top level must be a mapping" in str(err)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/fastscp.yaml")


# --- `fastscp config check FILE` ----------------------------------------------------

def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastscp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_config_check_prints_effective_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store_scp.yaml"
    path.write_text(GUIDE_YAML)
    assert run_cli(["config", "check", str(path), "--set", "server.port=4242"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["server"]["port"] == 4242
    assert out["server"]["ae_title"] == "MY_PACS"
    assert out["server"]["max_pdu"] == 131072  # effective: defaults filled in
    assert run_cli(["config", "check", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["accepted_sop_classes"][2] == "US Image Storage"


def test_config_check_fails_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: 70000\n")
    assert run_cli(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}, line 2: server.port:" in captured.err


MANY_ERRORS = """\
server:
  port: 70000
  ae_titel: X
  max_pdu: lots
storage:
  naming: hierarchicl
  duplicates: reject
accepted_sop_classes: [CT, NOPE, MR, ALSO_NOPE]
access:
  allowed_calling_aes:
    - hosts: [10.0.0.1]
    - ae_title: OK
      hosts: ["300.1.1.1/99"]
status:
  port: [1]
"""

MANY_ERRORS_AT = [  # (line, key) of each problem, in file order
    (2, "server.port"), (3, "server.ae_titel"), (4, "server.max_pdu"), (6, "storage.naming"),
    (8, "accepted_sop_classes[1]"), (8, "accepted_sop_classes[3]"),
    (11, "access.allowed_calling_aes[0].ae_title"), (13, "access.allowed_calling_aes[1].hosts[0]"),
    (15, "status.port"),
]


def test_every_problem_of_a_file_is_reported_in_file_order() -> None:
    err = error_of(MANY_ERRORS)
    assert [(p.line, p.key) for p in err.problems] == MANY_ERRORS_AT
    assert (err.line, err.key) == MANY_ERRORS_AT[0]  # the error itself is the first problem
    assert str(err).startswith("test.yaml, line 2: server.port: 70000 is out of range")
    assert str(err).endswith("(and 8 more: `fastscp config check` lists them all)")
    assert "did you mean 'hierarchical'" in err.problems[3].message
    assert "'ALSO_NOPE'" in err.problems[5].message


def test_a_cross_key_rule_is_reported_with_other_errors_but_not_on_a_bad_key() -> None:
    err = error_of("server:\n  port: x\nstorage:\n  naming: template\n")
    assert [(p.line, p.key) for p in err.problems] == [(2, "server.port"), (3, "storage.template")]  # its section
    # status.port is bad, so it holds its default 8042: no "already the DICOM port" about a value not written
    err = error_of("server:\n  port: 8042\nstatus:\n  port: [1]\n")
    assert [(p.line, p.key) for p in err.problems] == [(4, "status.port")]
    err = error_of("server:\n  tls:\n    enabled: true\n")  # both missing files, not only the first
    assert [p.key for p in err.problems] == ["server.tls.certificate", "server.tls.key"]


def test_config_check_lists_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MANY_ERRORS)
    assert run_cli(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert [line.split(": ")[:2] for line in lines[:-1]] == \
           [["error", f"{path}, line {n}"] for n, _key in MANY_ERRORS_AT]
    assert [line.split(": ")[2] for line in lines[:-1]] == [key for _n, key in MANY_ERRORS_AT]
    assert lines[-1] == "9 errors"


def test_config_defaults_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["config", "defaults"]) == 0
    assert parse_config_text(capsys.readouterr().out) == Config()
