"""Relay settings: file < environment < flags, clear errors, TLS, and the CLI's error mapping."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealwire.errors import ConfigError
from sealwire.protocol.frames import relay_id_for
from sealwire.relay.config import RelayServiceConfig, load_config

from .harness import RelayProcess, live_org, receive


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "relay.toml"
    file.write_text('[relay]\nport = 9000\nqueue-max-count = 7\nadmission = "open"\n')
    config = load_config(
        file,
        env={"SEALWIRE_RELAY_PORT": "9001", "SEALWIRE_RELAY_IDLE_TIMEOUT_S": "60"},
        overrides={"port": 9002, "host": None},
    )
    assert config.port == 9002  # the flag wins
    assert config.idle_timeout_s == 60.0  # the environment beats the default
    assert config.queue_max_count == 7  # the file beats the default
    assert config.host == "127.0.0.1"  # a flag left unset changes nothing


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": "0.0.0.0"}, "refusing plain ws://"),
        ({"tls_cert": "x.pem"}, "both tls_cert and tls_key"),
        ({"backend": "redis"}, "choose sqlite or nats"),
        ({"admission": "closed"}, "choose open or allow-list"),
        ({"organisations": ("abc",)}, "not an organisation id"),
        ({"queue_max_count": 0}, "queue_max_count must be positive"),
        ({"public_origin": "https://relay.example/path"}, "not of the form"),
    ],
)
def test_invalid_settings_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RelayServiceConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_settings_and_bad_values_are_named(tmp_path: Path) -> None:
    file = tmp_path / "relay.toml"
    file.write_text("[relay]\nquee_max_count = 3\n")
    with pytest.raises(
        ConfigError,
        match=r"\[relay\] quee_max_count: unknown setting \(did you mean queue_max_count",
    ):
        load_config(file, env={})
    with pytest.raises(ConfigError, match="SEALWIRE_RELAY_PORT"):
        load_config(env={"SEALWIRE_RELAY_PORT": "eighty"})
    with pytest.raises(ConfigError, match="unknown relay setting"):
        load_config(env={"SEALWIRE_RELAY_NOPE": "1"})
    (tmp_path / "bad.toml").write_text("[relay\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml", env={})
    (tmp_path / "latin1.toml").write_bytes(b"[relay]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(tmp_path / "latin1.toml", env={})


def test_origin_and_relay_id() -> None:
    assert RelayServiceConfig(port=8443).origin == "ws://127.0.0.1:8443"
    public = RelayServiceConfig(public_origin="wss://Relay.Example.com")
    assert public.origin == "wss://relay.example.com:443"
    assert relay_id_for(public.origin) == relay_id_for("relay.example.com:443")


def test_cli_reports_a_bad_setting_in_one_line_and_exits_1() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sealwire", "relay", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.strip().startswith("sealwire: relay: refusing plain ws://")
    assert len(out.stderr.strip().splitlines()) == 1


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_relay_serves_wss_under_its_public_origin(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cert, key = _self_signed(tmp_path)
    origin = f"wss://localhost:{port}"
    proc = RelayProcess(
        tmp_path / "relay",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--public-origin",
        origin,
        port=port,
    ).start()
    try:
        assert proc.url == origin
        context = ssl.create_default_context(cafile=str(cert))
        org = live_org()
        device = org.device(1)

        async def scenario() -> None:
            server = await org.connect_server(origin, ssl_context=context)
            conn = await device.connect(origin, ssl_context=context)
            await conn.send(device.seal_to(device, b"over tls"))
            assert len(await receive(conn, 1)) == 1
            await conn.close()
            await server.close()

        asyncio.run(scenario())
    finally:
        proc.stop()
