"""A switch's `tls:` settings in the config file: paths relative to the file, files checked
at load, errors naming the key (pure parsing; the TLS channel itself is exercised against
the real kernel target in tests/kernel/test_server_tls.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from hbmon.config import TlsConfig, parse_config
from hbmon.model import ValidationError


def config(tls: Any) -> dict[str, Any]:
    return {"switches": [{"name": "s1", "grpc": "127.0.0.1:9559"},
                         {"name": "s2", "grpc": "198.18.0.2:9559", "tls": tls}]}


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----BEGIN X-----\n-----END X-----\n")
    return tmp_path


def test_tls_keys_and_relative_paths(pki: Path) -> None:
    cfg = parse_config(config({"ca": "ca.pem", "cert": "client.pem", "key": "client.key",
                               "server_name": "s2.example"}), base=pki)
    assert cfg.switches[0].tls is None  # no tls: plaintext, as before
    assert cfg.switches[1].tls == TlsConfig(ca=pki / "ca.pem", cert=pki / "client.pem",
                                            key=pki / "client.key", server_name="s2.example")
    only_ca = parse_config(config({"ca": str(pki / "ca.pem")}), base=Path("/nonexistent"))
    assert only_ca.switches[1].tls == TlsConfig(ca=pki / "ca.pem")
    # `tls: {}`: TLS against the system's roots, no client certificate
    assert parse_config(config({}), base=pki).switches[1].tls == TlsConfig()
    assert isinstance(TlsConfig().channel_credentials(), grpc.ChannelCredentials)


@pytest.mark.parametrize(("tls", "key", "message"), [
    ({"ca": "missing.pem"}, "switches[1].tls.ca", "cannot read"),
    ({"cert": "client.pem"}, "switches[1].tls.key", "cert and key go together"),
    ({"key": "client.key"}, "switches[1].tls.cert", "cert and key go together"),
    ({"ca": "ca.pem", "certificate": "client.pem"}, "switches[1].tls.certificate",
     "unknown key"),
    ({"server_name": ""}, "switches[1].tls.server_name", "host name"),
    ("yes", "switches[1].tls", "a mapping"),
    ({"ca": 5}, "switches[1].tls.ca", "a path"),
])
def test_tls_errors_name_the_key(pki: Path, tls: Any, key: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_config(config(tls), base=pki)
    assert info.value.field == key and message in info.value.message, info.value


def test_shell_refuses_a_tls_switch(pki: Path) -> None:
    """`hbmon shell` speaks plaintext only: it says so rather than hanging on a TLS port."""
    from click.testing import CliRunner
    from hbmon.cli import main

    cfg = pki / "hbmon.yaml"
    cfg.write_text("switches: [{name: s1, grpc: '127.0.0.1:9559', tls: {ca: ca.pem}}]\n")
    result = CliRunner().invoke(main, ["shell", "-c", str(cfg)])
    assert result.exit_code != 0 and "plaintext P4Runtime only" in result.output, result.output
