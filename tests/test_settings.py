"""The one settings loader (sealwire.settings): precedence, one parsing of every kind of value
with errors naming the key and its source, unknown keys, ``sealwire config check``, the
generated reference in docs/OPERATIONS.md, and ``sealwire server --config`` end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sealwire.errors import ConfigError
from sealwire.relay.config import RELAY_SETTINGS, load_config
from sealwire.server.config import SERVER_SETTINGS, load_server_config
from sealwire.settings import SettingsError, parse_duration, parse_size, parse_value
from sealwire.settings.reference import REGENERATE, SECTIONS, stale_tables

OPERATIONS = Path(__file__).parents[1] / "docs" / "OPERATIONS.md"


def _field(section: Any, name: str) -> dataclasses.Field[Any]:
    return section.fields[name]


# --- precedence -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ({}, 8443),  # the default
        ({"file": "9000"}, 9000),
        ({"file": "9000", "env": "9001"}, 9001),
        ({"file": "9000", "env": "9001", "flag": "9002"}, 9002),
        ({"env": "9001", "flag": "9002"}, 9002),
        ({"file": "9000", "flag": "9002"}, 9002),
    ],
)
def test_relay_each_layer_overrides_the_one_below(
    tmp_path: Path, layers: dict[str, str], expected: int
) -> None:
    file = tmp_path / "relay.toml"
    file.write_text(f"[relay]\nport = {layers['file']}\n" if "file" in layers else "[relay]\n")
    env = {"SEALWIRE_RELAY_PORT": layers["env"]} if "env" in layers else {}
    config = load_config(file, env=env, overrides={"port": layers.get("flag")})
    assert config.port == expected


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ({}, 48 * 3600),
        ({"file": '"3d"'}, 3 * 86400),
        ({"file": '"3d"', "env": "7200"}, 7200),
        ({"file": '"3d"', "env": "7200", "flag": "90m"}, 5400),
    ],
)
def test_server_each_layer_overrides_the_one_below(
    tmp_path: Path, layers: dict[str, str], expected: int
) -> None:
    file = tmp_path / "server.toml"
    text = f"ticket_lifetime_s = {layers['file']}\n" if "file" in layers else ""
    file.write_text("[server]\n" + text)
    env = {"SEALWIRE_SERVER_TICKET_LIFETIME_S": layers["env"]} if "env" in layers else {}
    config = load_server_config(file, env=env, overrides={"ticket_lifetime_s": layers.get("flag")})
    assert config.ticket_lifetime_s == expected


def test_one_file_holds_both_tables_and_each_reads_its_own(tmp_path: Path) -> None:
    file = tmp_path / "sealwire.toml"
    file.write_text('[relay]\nport = 9100\n[server]\norganisation = "Example"\n')
    assert load_config(file, env={}).port == 9100
    assert load_server_config(file, env={}).organisation == "Example"
    # A relay file of old, without tables, is still read as relay settings.
    legacy = tmp_path / "legacy.toml"
    legacy.write_text("port = 9200\n")
    assert load_config(legacy, env={}).port == 9200
    assert load_server_config(legacy, env={}) == load_server_config(env={})


# --- one parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " On "])
def test_booleans_true(text: str) -> None:
    assert parse_value(_field(RELAY_SETTINGS, "allow_plain"), text) is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "off"])
def test_booleans_false(text: str) -> None:
    assert parse_value(_field(SERVER_SETTINGS, "admin_allow_plain"), text) is False


@pytest.mark.parametrize("text", ["", "maybe", "2"])
def test_booleans_refused_with_the_rule(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a boolean \(true/false, yes/no, on/off, 1/0\)"):
        parse_value(_field(RELAY_SETTINGS, "allow_plain"), text)


def test_relay_and_server_read_booleans_by_the_same_rule() -> None:
    """Defect: the relay took an empty variable as false and the server refused ``on``."""
    server = load_server_config(env={"SEALWIRE_SERVER_ADMIN_ALLOW_PLAIN": "on"})
    assert server.admin_allow_plain is True
    with pytest.raises(ConfigError, match='SEALWIRE_RELAY_ALLOW_PLAIN: "" is not a boolean'):
        load_config(env={"SEALWIRE_RELAY_ALLOW_PLAIN": ""})
    with pytest.raises(ConfigError, match='SEALWIRE_SERVER_ADMIN_ALLOW_PLAIN: "" is not a boolean'):
        load_server_config(env={"SEALWIRE_SERVER_ADMIN_ALLOW_PLAIN": ""})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90), ("90", 90), ("90s", 90), ("30m", 1800), ("48h", 172800), ("7d", 604800),
     ("1.5h", 5400), (2.5, 2.5)],
)  # fmt: skip
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


def test_durations_of_whole_seconds_and_their_errors() -> None:
    whole = _field(SERVER_SETTINGS, "ticket_lifetime_s")
    assert parse_value(whole, "2d") == 172800
    assert isinstance(parse_value(whole, "2d"), int)
    relay = _field(RELAY_SETTINGS, "idle_timeout_s")
    assert parse_value(relay, "1.5") == 1.5
    with pytest.raises(ValueError, match=r'^"1.5" is not a whole number of seconds'):
        parse_value(whole, "1.5")
    for bad in ("abc", "10 weeks", "-5", "", True):
        with pytest.raises(ValueError, match="is not a number of seconds"):
            parse_value(relay, bad)
    with pytest.raises(
        ConfigError,
        match=r'^SEALWIRE_SERVER_TICKET_LIFETIME_S: "abc" is not a whole number of seconds',
    ):
        load_server_config(env={"SEALWIRE_SERVER_TICKET_LIFETIME_S": "abc"})


@pytest.mark.parametrize(
    ("value", "size"),
    [(4096, 4096), ("4096", 4096), ("64KiB", 65536), ("256MiB", 256 << 20), ("1GiB", 1 << 30),
     ("2 kB", 2000), ("1MB", 10**6), ("1.5KiB", 1536)],
)  # fmt: skip
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


def test_size_errors_name_the_key() -> None:
    for bad in ("lots", "1.3B", "5 TB", -1, 1.5, ""):
        with pytest.raises(ValueError, match="is not a size in bytes"):
            parse_size(bad)
    with pytest.raises(ConfigError, match=r'^--queue-max-bytes: "lots" is not a size in bytes'):
        load_config(env={}, overrides={"queue_max_bytes": "lots"})
    assert load_config(env={"SEALWIRE_RELAY_QUEUE_MAX_BYTES": "64MiB"}).queue_max_bytes == 1 << 26


def test_whole_numbers_numbers_lists_and_text(tmp_path: Path) -> None:
    port = _field(RELAY_SETTINGS, "port")
    assert parse_value(port, " 80 ") == 80
    for bad in ("eighty", "-1", "8.5", 8.5, True):
        with pytest.raises(ValueError, match=r"is not a whole number \(0 or more\)"):
            parse_value(port, bad)
    rate = _field(RELAY_SETTINGS, "frame_rate")
    assert parse_value(rate, "2.5") == 2.5 and parse_value(rate, 3) == 3.0
    with pytest.raises(ValueError, match='"fast" is not a number'):
        parse_value(rate, "fast")
    orgs = _field(RELAY_SETTINGS, "organisations")
    assert parse_value(orgs, "a, b,,c") == ("a", "b", "c")
    assert parse_value(orgs, ["a"]) == ("a",)
    with pytest.raises(ValueError, match="is not a list of text"):
        parse_value(orgs, [1])
    host = _field(RELAY_SETTINGS, "host")
    with pytest.raises(ValueError, match=r"is not text \(quote it\)"):
        parse_value(host, 8080)
    file = tmp_path / "relay.toml"
    file.write_text("[relay]\nhost = 127\n")
    with pytest.raises(ConfigError, match=r"relay.toml: \[relay\] host: 127 is not text"):
        load_config(file, env={})


def test_checks_of_the_whole_configuration_name_where_the_setting_came_from(
    tmp_path: Path,
) -> None:
    file = tmp_path / "server.toml"
    file.write_text('[server]\nadmin_tls_cert = "c.pem"\n')
    with pytest.raises(
        ConfigError, match=r"set both or neither \(set by .*server.toml: \[server\]"
    ):
        load_server_config(file, env={})
    with pytest.raises(
        ConfigError, match=r"ticket_attempts must be between 1 and 20 \(set by --ticket-attempts\)"
    ):
        load_server_config(env={}, overrides={"ticket_attempts": "50"})


# --- unknown keys ---------------------------------------------------------------------------


def test_unknown_keys_are_named_with_a_suggestion(tmp_path: Path) -> None:
    file = tmp_path / "server.toml"
    file.write_text("[server]\nticket_lifetme_s = 60\n")
    with pytest.raises(
        ConfigError,
        match=r"server.toml: \[server\] ticket_lifetme_s: unknown setting "
        r"\(did you mean ticket_lifetime_s\?\)",
    ):
        load_server_config(file, env={})
    with pytest.raises(
        ConfigError,
        match=r"SEALWIRE_SERVER_ORGANIZATION: unknown server setting "
        r"\(did you mean SEALWIRE_SERVER_ORGANISATION\?\)",
    ):
        load_server_config(env={"SEALWIRE_SERVER_ORGANIZATION": "x"})


def test_every_problem_is_collected(tmp_path: Path) -> None:
    file = tmp_path / "relay.toml"
    file.write_text('[relay]\nquee_max_count = 3\nport = "x"\n')
    with pytest.raises(SettingsError) as caught:
        load_config(file, env={"SEALWIRE_RELAY_NOPE": "1"}, overrides={"nats_replicas": "two"})
    where = [problem.where for problem in caught.value.problems]
    assert where == [
        f"{file}: [relay] quee_max_count",
        f"{file}: [relay] port",
        "SEALWIRE_RELAY_NOPE",
        "--nats-replicas",
    ]
    assert str(caught.value).endswith("(and 3 more problems)")


def test_secrets_and_the_file_variable_are_not_settings() -> None:
    env = {
        "SEALWIRE_SERVER_PASSPHRASE": "secret",
        "SEALWIRE_SERVER_CONFIG": "/nowhere.toml",
        "SEALWIRE_RELAY_CONFIG": "/nowhere.toml",
    }
    assert load_server_config(env=env).passphrase is False
    assert load_config(env=env).port == 8443


# --- sealwire config check ------------------------------------------------------------------


def _sealwire(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sealwire", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_config_check_names_each_unknown_or_invalid_key(tmp_path: Path) -> None:
    file = tmp_path / "sealwire.toml"
    file.write_text(
        "[relay]\n"
        'port = "eighty"\n'
        "quee_max_count = 3\n"
        'host = "0.0.0.0"\n'
        "[server]\n"
        'ticket_lifetime_s = "abc"\n'
        "max_devices_per_user = 50\n"
        "[sever]\n"
        "x = 1\n"
    )
    out = _sealwire("config", "check", str(file))
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines == [
        f"{file}: [sever]: unknown table (Sealwire reads [relay] and [server])",
        f'{file}: [relay] port: "eighty" is not a whole number (0 or more)',
        f"{file}: [relay] quee_max_count: unknown setting (did you mean queue_max_count?)",
        f"{file}: [relay] host: relay: refusing plain ws:// on 0.0.0.0; give tls_cert and "
        "tls_key, or set allow_plain behind a TLS-terminating proxy",
        f'{file}: [server] ticket_lifetime_s: "abc" is not a whole number of seconds '
        "(or e.g. 30m, 48h, 7d)",
        f"{file}: [server] max_devices_per_user: max_devices_per_user must be between 1 and 10",
    ]


def test_config_check_ok_and_unreadable(tmp_path: Path) -> None:
    file = tmp_path / "sealwire.toml"
    file.write_text('[relay]\nqueue_max_bytes = "64MiB"\n[server]\nticket_lifetime_s = "7d"\n')
    # The file is checked on its own: a bad variable does not make it wrong.
    out = _sealwire("config", "check", str(file), env={"SEALWIRE_RELAY_PORT": "x"})
    assert (out.returncode, out.stdout) == (0, f"{file}: OK ([relay] and [server])\n")
    out = _sealwire("config", "check", str(tmp_path / "missing.toml"))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"sealwire: cannot read the settings file {tmp_path / 'missing.toml'}: "
        "No such file or directory"
    )


# --- the reference --------------------------------------------------------------------------


def test_the_settings_reference_in_operations_md_is_current() -> None:
    stale = stale_tables(OPERATIONS.read_text(encoding="utf-8"))
    assert not stale, (
        f"docs/OPERATIONS.md: the {', '.join(stale)} tables are stale: run {REGENERATE}"
    )


def test_the_reference_goes_stale_when_a_setting_changes() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    assert stale_tables(text.replace("Most envelopes queued for one address.", "Changed.")) == [
        "relay"
    ]
    assert stale_tables(text.replace("<!-- settings-reference:admin end -->", "")) == ["admin"]
    for section in SECTIONS:  # every field is documented and in the table
        for name in section.fields:
            assert f"| `{name}` | " in text, (section.name, name)
    check = subprocess.run(
        [sys.executable, "-m", "sealwire.settings", "--check", str(OPERATIONS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout


def test_the_cli_flags_are_the_documented_ones() -> None:
    import argparse

    from sealwire.cli.main import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, section in (("relay", RELAY_SETTINGS), ("server", SERVER_SETTINGS)):
        flags = {
            option: action.dest
            for action in sub.choices[command]._actions
            for option in action.option_strings
            if action.dest in section.fields
        }
        assert {dest: option for option, dest in flags.items()} == dict(section.flags), command


# --- sealwire server --config ----------------------------------------------------------------


def test_server_started_with_a_config_file_applies_it(tmp_path: Path) -> None:
    from tests.e2e.harness import RelayProcess, ServerProcess, cli

    relay = RelayProcess(tmp_path / "relay").start()
    try:
        config = tmp_path / "sealwire.toml"
        config.write_text('[server]\norganisation = "Configured Org"\nticket_lifetime_s = "3d"\n')
        data = tmp_path / "org"
        server = ServerProcess(data, relay.url, "--config", str(config)).start()
        try:
            assert "organisation 'Configured Org'" in server.out.read_text()
            before = int(time.time())
            # The admin client's documented variable, not --data.
            env = {**os.environ, "SEALWIRE_ADMIN_DATA": str(data)}
            added = subprocess.run(
                [sys.executable, "-m", "sealwire", "admin", "--json", "user", "add", "alice"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert added.returncode == 0, added.stderr
            expires = json.loads(added.stdout)["expires_at"]
            assert before + 3 * 86400 - 5 <= expires <= int(time.time()) + 3 * 86400 + 5
            # The old variable still works, with a deprecation note.
            legacy = subprocess.run(
                [sys.executable, "-m", "sealwire", "admin", "--json", "status"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "SEALWIRE_DATA": str(data)},
            )
            assert legacy.returncode == 0, legacy.stderr
            assert "SEALWIRE_DATA is deprecated; set SEALWIRE_ADMIN_DATA" in legacy.stderr
            assert cli("config", "check", str(config)).code == 0
        finally:
            server.stop()
    finally:
        relay.stop()
