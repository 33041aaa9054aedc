"""TLS and mutual TLS on the real hbmon-kernel-target, and its refusal of plaintext on a
non-loopback address (issue 10, "Secure P4Runtime").

Certificates are made here with `cryptography`: CA "one" signs the target's certificate
(127.0.0.1 and localhost) and the controller's client certificate; CA "two", which the target
does not trust, signs another client certificate. The controller under test is the real
`hbmon serve` with the switch's `tls:` settings; the other clients are P4RuntimeClient and
raw gRPC channels. P4Runtime itself only says (spec §4, "Security") that the channel should
be TLS-protected and clients authenticated; gRPC's TLS is how.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hbmon.p4 import P4Schema, TableEntry
from hbmon.p4.client import P4RuntimeClient, P4RuntimeError
from hbmon_kernel.server import EXIT_REFUSED, is_loopback, parse_args
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from .bpf_lab import Lab, ip
from .server_harness import P4INFO, KernelTarget, RawStream, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from product_lab import free_port, serve  # bench/ is not a package

pytestmark = pytest.mark.netns

PEER_TABLES = ("HbIngress.peers", "HbIngress.peer_ids", "HbEgress.peer_requests")


# ---- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path

    @property
    def cert_bytes(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_bytes(self) -> bytes:
        return self.key.read_bytes()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> Pem:
    pem = Pem(directory / f"{stem}.pem", directory / f"{stem}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return pem


class Ca:
    """A throw-away certificate authority (P-256, valid from an hour ago for a day)."""

    def __init__(self, directory: Path, cn: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(cn)
        self.cert = self._builder(self.name, self.key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True,
        ).add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True,
        ).sign(self.key, hashes.SHA256())
        self.pem = _write(directory, cn, self.cert, self.key)

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey,
                 ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1)))

    def issue(self, cn: str, *, server: bool) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(_name(cn), key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True,
        ).add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]), critical=False)
        return _write(self.directory, cn, builder.sign(self.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Certs:
    ca: Pem  # CA one: trusted by the target (--tls-ca) and by the clients
    server: Pem  # the target's, from CA one
    client: Pem  # the controller's, from CA one
    foreign_ca: Pem  # CA two: nobody trusts it
    foreign_client: Pem  # a client certificate from CA two


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("pki")
    one, two = Ca(directory, "hbmon-test-ca-one"), Ca(directory, "hbmon-test-ca-two")
    return Certs(ca=one.pem, server=one.issue("hbmon-target", server=True),
                 client=one.issue("hbmon-controller", server=False),
                 foreign_ca=two.pem, foreign_client=two.issue("intruder", server=False))


def tls_args(certs: Certs, *, mutual: bool) -> list[str]:
    args = ["--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key)]
    return args + (["--tls-ca", str(certs.ca.cert)] if mutual else [])


def credentials(certs: Certs, client: Pem | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca.cert_bytes,
        private_key=client.key_bytes if client else None,
        certificate_chain=client.cert_bytes if client else None)


def capabilities(address: str, creds: grpc.ChannelCredentials | None,
                 server_name: str | None = None) -> str | grpc.StatusCode:
    """The target's P4Runtime version, or the status code of the failed call."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (grpc.insecure_channel(address) if creds is None
               else grpc.secure_channel(address, creds, options=options))
    try:
        reply = p4runtime_pb2_grpc.P4RuntimeStub(channel).Capabilities(
            p4runtime_pb2.CapabilitiesRequest(), timeout=10)
        return str(reply.p4runtime_api_version)
    except grpc.RpcError as err:
        return err.code()
    finally:
        channel.close()


# ---- the mutual-TLS target ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_target(certs: Certs) -> Iterator[KernelTarget]:
    with Lab(1) as lab, KernelTarget(lab.ports, extra_args=tls_args(certs, mutual=True)) as t:
        assert "(TLS, client certificates required) listening" in t.output
        yield t
        assert t.running(), f"target died:\n{t.output}"


def test_mtls_controller_becomes_primary_and_programs_peers(
        mtls_target: KernelTarget, certs: Certs, tmp_path: Path) -> None:
    """The real `hbmon serve`, with `tls: {ca, cert, key}` in its switch entry, wins
    arbitration (spec §5) over mutual TLS and programs its peers; a second client over the
    same mutual TLS reads them back."""
    assert mtls_target.address is not None
    api_port = free_port()
    config = {
        "interval_ms": 100, "store": f"sqlite:///{tmp_path / 'hb.db'}",
        "api": {"host": "127.0.0.1", "port": api_port},
        "switches": [{"name": "s1", "grpc": mtls_target.address, "p4info": str(P4INFO),
                      "tls": {"ca": str(certs.ca.cert), "cert": str(certs.client.cert),
                              "key": str(certs.client.key)}}],
        "peers": [{"name": f"p{i}", "address": f"198.18.7.{i}", "peer_id": 70 + i,
                   "mac": f"02:00:00:00:07:0{i}", "port": 1} for i in (1, 2)],
    }

    def switch_state() -> dict[str, object]:
        try:
            data = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/switches", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return dict(data["switches"][0])

    schema = P4Schema.load(P4INFO)
    with serve(config, tmp_path) as proc:
        assert wait_for(lambda: switch_state().get("primary") is True, timeout=60,
                        pause=0.2), (switch_state(), proc.poll(),
                                     (tmp_path / "serve.log").read_text()[-3000:],
                                     mtls_target.output[-3000:])
        with P4RuntimeClient(mtls_target.address, 1, election_id=1, schema=schema,
                             credentials=credentials(certs, certs.client)) as reader:
            reader.connect(timeout=10)
            assert not reader.primary  # the controller (election id 10) is

            def peer_entries() -> list[TableEntry]:
                found = [TableEntry.decode(schema, e)
                         for e in reader.read([TableEntry(t) for t in PEER_TABLES])]
                return found if len(found) == 2 * len(PEER_TABLES) else []

            entries = wait_for(peer_entries, timeout=30, pause=0.2)
    # 3 entries per peer (inventory.peer_entities), the ones the config asks for
    assert sorted(e.table for e in entries) == sorted(PEER_TABLES * 2), entries
    assert {e.match["peer_id"] for e in entries if e.table == PEER_TABLES[1]} == {71, 72}


def test_mtls_refuses_plaintext_and_clients_without_a_trusted_certificate(
        mtls_target: KernelTarget, certs: Certs) -> None:
    """With --tls-ca the target requires a client certificate chaining to that CA: a
    plaintext client, a TLS client without a certificate and one whose certificate another
    CA signed all fail before any RPC runs (UNAVAILABLE: the handshake fails)."""
    address = mtls_target.address
    assert address is not None
    assert capabilities(address, credentials(certs, certs.client)) == "1.4.1"  # the control
    assert capabilities(address, None) == grpc.StatusCode.UNAVAILABLE
    assert capabilities(address, credentials(certs)) == grpc.StatusCode.UNAVAILABLE
    assert capabilities(address, credentials(certs, certs.foreign_client)) \
        == grpc.StatusCode.UNAVAILABLE
    # nor can such a client open a stream, let alone arbitrate (spec §5) and send PacketOut
    with RawStream(address, credentials(certs, certs.foreign_client)) as stream:
        stream.arbitrate(election_id=1 << 100)
        assert stream.next("arbitration", timeout=5) is None
        ended = stream.wait_end(10)
        assert ended is not None and ended.code() == grpc.StatusCode.UNAVAILABLE


def test_client_checks_the_target_certificate(mtls_target: KernelTarget, certs: Certs) -> None:
    """The client side of TLS: a target whose certificate does not chain to the client's
    roots, or does not carry the expected name, is refused."""
    address = mtls_target.address
    assert address is not None
    foreign_roots = grpc.ssl_channel_credentials(
        root_certificates=certs.foreign_ca.cert_bytes, private_key=certs.client.key_bytes,
        certificate_chain=certs.client.cert_bytes)
    assert capabilities(address, foreign_roots) == grpc.StatusCode.UNAVAILABLE
    good = credentials(certs, certs.client)
    assert capabilities(address, good, server_name="localhost") == "1.4.1"
    assert capabilities(address, good, server_name="s1.example") \
        == grpc.StatusCode.UNAVAILABLE
    # P4RuntimeClient's server_name is the same override
    schema = P4Schema.load(P4INFO)
    with P4RuntimeClient(address, 1, election_id=1, schema=schema, credentials=good,
                         server_name="s1.example") as wrong, \
            pytest.raises(P4RuntimeError, match="no arbitration answer"):
        wrong.connect(timeout=3)


# ---- TLS without client certificates; plaintext on a non-loopback address -----------------


def test_tls_without_client_auth(certs: Certs) -> None:
    """Without --tls-ca any TLS client is served (it must still trust the target), and a
    plaintext one is not."""
    with Lab(1) as lab, KernelTarget(lab.ports, extra_args=tls_args(certs, mutual=False)) as t:
        assert t.address is not None
        assert "(TLS) listening" in t.output
        assert capabilities(t.address, credentials(certs)) == "1.4.1"
        assert capabilities(t.address, None) == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def lab_address() -> Iterator[tuple[Lab, str]]:
    """A one-port lab whose root-side veth carries a (non-loopback) lab address: what the
    target listens on is reachable only from this host and the lab's namespace."""
    with Lab(1) as lab:
        ip("addr", "add", "198.18.254.1/30", "dev", lab.ifaces[0])
        yield lab, "198.18.254.1"


def test_refuses_plaintext_on_a_non_loopback_address(lab_address: tuple[Lab, str],
                                                     certs: Certs) -> None:
    """Plaintext P4Runtime on a non-loopback address: exit 2 with a message naming the
    way out; with TLS, or with --insecure, the target serves there."""
    lab, address = lab_address
    for where in (f"{address}:0", "0.0.0.0:0", "[::]:0"):
        target = KernelTarget(lab.ports, extra_args=["--grpc-addr", where])
        with pytest.raises(RuntimeError, match="exited with 2"):
            target.start()
        assert target.wait() == EXIT_REFUSED
        assert "is not a loopback address" in target.output and "--insecure" in target.output
        assert "--tls-cert" in target.output
    with KernelTarget(lab.ports, extra_args=["--grpc-addr", f"{address}:0",
                                             *tls_args(certs, mutual=True)]) as t:
        assert t.address is not None and t.address.startswith(f"{address}:")
        # the certificate names 127.0.0.1/localhost, so name it when dialling the lab address
        assert capabilities(t.address, credentials(certs, certs.client),
                            server_name="localhost") == "1.4.1"
    with KernelTarget(lab.ports, extra_args=["--grpc-addr", f"{address}:0", "--insecure"]) as t:
        assert t.address is not None and t.address.startswith(f"{address}:")
        assert "(plaintext) listening" in t.output
        assert capabilities(t.address, None) == "1.4.1"


def test_tls_options_are_checked() -> None:
    """Half a TLS configuration is a usage error (argparse: exit 2), before anything starts."""
    for args, message in ((["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
                          (["--tls-ca", "ca.pem"], "--tls-ca needs --tls-cert")):
        out = subprocess.run([str(Path(sys.executable).with_name("hbmon-kernel-target")),
                              "-i", "1@lo", *args], capture_output=True, text=True,
                             timeout=60, check=False)
        assert out.returncode == EXIT_REFUSED and message in out.stderr, out.stderr


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1:9559", True), ("127.8.9.10:1", True), ("localhost:9559", True),
    ("[::1]:9559", True), ("unix:/run/hbmon.sock", True),
    ("0.0.0.0:9559", False), ("[::]:9559", False), ("198.18.0.1:9559", False),
    ("switch1.example:9559", False), ("10.0.0.1:9559", False),
])
def test_is_loopback(address: str, loopback: bool) -> None:
    """Pure logic: which listen addresses count as loopback (names other than localhost do
    not: what they resolve to can change)."""
    assert is_loopback(address) is loopback


def test_documented_defaults() -> None:
    """Pure logic: the defaults README.md and docs/dataplane.md state are the parser's."""
    args = parse_args(["-i", "1@lo"])
    assert (args.grpc_addr, args.max_streams, args.arbitration_timeout,
            args.max_message_bytes, args.insecure, args.tls_cert) == \
        ("127.0.0.1:9559", 32, 10.0, 32 << 20, False, None)
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    assert "`--max-streams` (32 StreamChannels" in readme
    assert "`--arbitration-timeout` (10 s" in readme and "`--max-message-bytes` (32 MiB)" in readme
    table = (root / "docs" / "dataplane.md").read_text()
    for row in ("| `--max-streams N` | 32 |", "| `--arbitration-timeout SECONDS` | 10 |",
                "| `--max-message-bytes BYTES` | 33554432 (32 MiB) |",
                "| `--grpc-addr HOST:PORT` | `127.0.0.1:9559` |"):
        assert row in table, row
