"""`--tls auto` / `motionserve tls init`: the local CA and server certificate (motionserve.tls).

Certificates are checked field by field and by real TLS handshakes with Python's ssl module; the
end-to-end run with the official client is tests/e2e/test_tls_auto.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from motionserve.tls import LocalTls, TlsSetupError, client_host, client_lines, default_names, ensure_local_tls, normalize_names


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_run_makes_a_ca_and_a_server_certificate_with_the_right_sans(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "tls", ["localhost", "127.0.0.1", "::1", "gpu-box.lan", "10.0.0.5"])
    assert files.created_ca and files.issued_server

    server = _cert(files.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "gpu-box.lan"]  # names as DNS entries...
    assert san.get_values_for_type(x509.IPAddress) == [  # ...addresses as IP entries, which is what clients match
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), ipaddress.ip_address("10.0.0.5"),
    ]
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    server_days = (server.not_valid_after_utc - server.not_valid_before_utc).days
    assert 360 <= server_days <= 400

    ca = _cert(files.ca_cert)
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650

    assert _mode(files.ca_key) == 0o600 and _mode(files.server_key) == 0o600
    assert _mode(files.directory) == 0o700
    # The bundle for SSL_CERT_FILE: the public roots and the local CA, so the same shell still reaches the hub.
    bundle = files.ca_bundle.read_bytes()
    assert files.ca_cert.read_bytes() in bundle and bundle.count(b"BEGIN CERTIFICATE") > 50


def test_later_starts_reuse_the_files(tmp_path: Path) -> None:
    first = ensure_local_tls(tmp_path, ["localhost", "127.0.0.1"])
    before = {p: p.read_bytes() for p in (first.ca_cert, first.ca_key, first.server_cert, first.server_key)}
    again = ensure_local_tls(tmp_path, ["127.0.0.1", "LOCALHOST"])  # same set, other order and case
    assert not again.created_ca and again.issued_server is None
    assert {p: p.read_bytes() for p in before} == before


def test_other_names_reissue_the_server_certificate_under_the_same_ca(tmp_path: Path) -> None:
    first = ensure_local_tls(tmp_path, ["localhost", "127.0.0.1"])
    ca_before, server_before = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    again = ensure_local_tls(tmp_path, ["localhost", "127.0.0.1", "10.1.2.3"])
    assert not again.created_ca and again.issued_server and "names were" in again.issued_server
    assert again.ca_cert.read_bytes() == ca_before and again.server_cert.read_bytes() != server_before
    assert "10.1.2.3" in {str(ip) for ip in _cert(again.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)}


def test_a_server_certificate_near_its_end_is_renewed(tmp_path: Path) -> None:
    ensure_local_tls(tmp_path, ["localhost"])
    now = dt.datetime.now(dt.timezone.utc)
    assert ensure_local_tls(tmp_path, ["localhost"], now=now + dt.timedelta(days=300)).issued_server is None
    later = ensure_local_tls(tmp_path, ["localhost"], now=now + dt.timedelta(days=380))  # < 30 days left
    assert later.issued_server and "expires" in later.issued_server and not later.created_ca
    assert _cert(later.server_cert).not_valid_after_utc > now + dt.timedelta(days=700)


def test_a_lost_ca_key_makes_a_new_ca_and_a_new_server_certificate(tmp_path: Path) -> None:
    first = ensure_local_tls(tmp_path, ["localhost"])
    old_ca = first.ca_cert.read_bytes()
    first.ca_key.unlink()
    again = ensure_local_tls(tmp_path, ["localhost"])
    assert again.created_ca and again.issued_server and again.ca_cert.read_bytes() != old_ca
    _cert(again.server_cert).verify_directly_issued_by(_cert(again.ca_cert))


def test_names_are_checked_and_normalized() -> None:
    assert normalize_names([" LocalHost ", "[::1]", "0:0:0:0:0:0:0:1", "127.0.0.1", "*.lan"]) == ("localhost", "::1", "127.0.0.1", "*.lan")
    for bad in (["bad name"], ["-x.lan"], ["a_b"], [""]):
        with pytest.raises(TlsSetupError):
            normalize_names(bad)
    defaults = default_names()
    assert defaults[:3] == ("localhost", "127.0.0.1", "::1")
    assert normalize_names(defaults) == defaults
    # The address `serve --host` binds is a name clients use, unless it is a wildcard.
    assert default_names("10.0.0.7") == (*defaults, "10.0.0.7")
    assert default_names("0.0.0.0") == default_names("::") == default_names("127.0.0.1") == defaults


def _serve_once(files: LocalTls, family: int, address: str) -> tuple[int, threading.Thread]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.server_cert, files.server_key)
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def accept() -> None:
        with listener:
            listener.settimeout(10)
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass  # the client refused the certificate: that is the client's side of the test

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return port, thread


def _handshake(files: LocalTls, family: int, address: str, server_name: str) -> bytes:
    port, thread = _serve_once(files, family, address)
    client = ssl.create_default_context(cafile=str(files.ca_bundle))  # what SSL_CERT_FILE gives a Python client
    try:
        with socket.create_connection((address, port), timeout=10) as raw:
            with client.wrap_socket(raw, server_hostname=server_name) as tls:
                return tls.recv(2)
    finally:
        thread.join(10)


def test_clients_trusting_the_ca_accept_every_name_and_no_other(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path, ["localhost", "127.0.0.1", "::1"])
    assert _handshake(files, socket.AF_INET, "127.0.0.1", "127.0.0.1") == b"ok"
    assert _handshake(files, socket.AF_INET, "127.0.0.1", "localhost") == b"ok"
    if socket.has_ipv6:
        try:
            assert _handshake(files, socket.AF_INET6, "::1", "::1") == b"ok"
        except OSError as exc:  # no IPv6 loopback in this container
            if isinstance(exc, ssl.SSLError):
                raise
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(files, socket.AF_INET, "127.0.0.1", "elsewhere.example")


def test_client_lines_name_the_files_and_hosts(tmp_path: Path) -> None:
    files = ensure_local_tls(tmp_path / "tls", ["localhost", "127.0.0.1", "::1"])
    assert client_host("0.0.0.0", 8443, files.names) == "127.0.0.1:8443"
    assert client_host("::1", 8443, files.names) == "[::1]:8443"
    key_file = tmp_path / "admin-key.txt"
    lines = client_lines(files, "127.0.0.1:8443", key_file)
    assert f'# export FAL_KEY="$(cat {key_file})"' in "\n".join(lines)  # no key yet: a hint, not a command
    key_file.write_text("id:secret\n")
    lines = client_lines(files, "127.0.0.1:8443", key_file)
    assert f'export FAL_KEY="$(cat {key_file})"' in lines and "secret" not in "\n".join(lines)
    for expected in (
        "export FAL_RUN_HOST=127.0.0.1:8443/run",
        "export FAL_QUEUE_RUN_HOST=127.0.0.1:8443/queue",
        f"export SSL_CERT_FILE={files.ca_bundle}",
        f"export NODE_EXTRA_CA_CERTS={files.ca_cert}",
        'fal_client.client.REST_URL = "https://127.0.0.1:8443/rest"',
        'fal_client.client.CDN_URL = "https://127.0.0.1:8443/cdn"',
    ):
        assert expected in lines


def _motionserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "motionserve", *args], capture_output=True, text=True, timeout=120)


def test_tls_init_command(tmp_path: Path) -> None:
    out = _motionserve("tls", "init", "--data-dir", str(tmp_path), "--names", "localhost,127.0.0.1,box.lan", "--port", "8443")
    assert out.returncode == 0, out.stderr
    assert "export FAL_RUN_HOST=127.0.0.1:8443/run" in out.stdout
    assert f"export NODE_EXTRA_CA_CERTS={(tmp_path / 'tls' / 'ca.pem').resolve()}" in out.stdout
    assert (tmp_path / "tls" / "server.key").exists()

    bad = _motionserve("tls", "init", "--data-dir", str(tmp_path), "--names", "not a name")
    assert bad.returncode != 0 and "'not a name' is neither an IP address nor a DNS name" in bad.stderr
    both = _motionserve("serve", "--data-dir", str(tmp_path), "--tls", "auto", "--tls-cert", "x.pem", "--tls-key", "x.key")
    assert both.returncode != 0 and "leave out --tls-cert" in both.stderr
