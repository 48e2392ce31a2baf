"""HTTPS in one step: a local certificate authority and a server certificate in `<data-dir>/tls/`.

The official fal clients only speak `https://`, so `motionserve serve --tls auto` (and `motionserve tls
init`) make a private CA once (10 years) and a server certificate signed by it (about a year) for the
names and addresses clients type. Later starts reuse both; the server certificate is issued again when
it is within 30 days of expiry, names other addresses, or was not signed by the CA on disk. Keys are
0600 in a 0700 folder. The CA certificate is what clients trust; `ca-bundle.pem` is the same CA after
the public roots (certifi), for `SSL_CERT_FILE`, which *replaces* a Python process's trust store: with
the CA alone the same shell could no longer reach any public HTTPS site (the hub, fal.ai).

A leaf: cryptography and certifi only.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=397)  # the longest browsers accept for a server certificate
RENEW_BEFORE = dt.timedelta(days=30)
# Signing and verifying clocks may disagree by a little; a certificate valid from "now" would not be yet.
BACKDATE = dt.timedelta(hours=1)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class TlsSetupError(ValueError):
    """A name that cannot go into a certificate, or TLS files that cannot be read or written."""


@dataclass(frozen=True)
class LocalTls:
    """The files of the local CA and the server certificate, and what this start did to them."""

    directory: Path
    names: tuple[str, ...]
    created_ca: bool = False
    issued_server: str | None = None  # why the server certificate was (re)issued; None: reused

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def ca_bundle(self) -> Path:
        return self.directory / "ca-bundle.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"


# -- names ----------------------------------------------------------------------------------------


WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def default_names(bind_host: str | None = None) -> tuple[str, ...]:
    """localhost, the loopback addresses, this machine's host name (when it can be a DNS name) and the
    address the server binds, unless that is a wildcard (clients could not reach it otherwise)."""
    names = ["localhost", "127.0.0.1", "::1"]
    for extra in (socket.gethostname(), bind_host or ""):
        name = extra.strip().strip("[]").lower()
        if name not in WILDCARD_HOSTS and (_as_ip(name) is not None or _is_dns_name(name)) and name not in names:
            names.append(name)
    return tuple(names)


def normalize_names(names: Sequence[str]) -> tuple[str, ...]:
    """Names as they go into the certificate: IPs in canonical form, DNS names lower-case, no repeats."""
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        ip = _as_ip(name.strip("[]"))
        if ip is not None:
            name = str(ip)
        elif not _is_dns_name(name):
            raise TlsSetupError(f"{raw!r} is neither an IP address nor a DNS name (letters, digits, '-', '.', a leading '*.')")
        if name not in out:
            out.append(name)
    if not out:
        raise TlsSetupError("no names for the server certificate")
    return tuple(out)


def _as_ip(name: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _is_dns_name(name: str) -> bool:
    labels = name.removeprefix("*.").rstrip(".").split(".")
    return len(name) <= 253 and all(_DNS_LABEL.match(label) for label in labels)


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names as dNSName entries, addresses as iPAddress entries: clients match an IP only against the latter."""
    entries: list[x509.GeneralName] = []
    for name in names:
        ip = _as_ip(name)
        entries.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(name))
    return entries


def _names_of(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


# -- files ----------------------------------------------------------------------------------------


def ensure_local_tls(directory: Path, names: Sequence[str] | None = None, *, now: dt.datetime | None = None) -> LocalTls:
    """The CA and server certificate in `directory`, made or renewed as needed (see the module doc).

    Safe when several processes start on the same folder at once (a lock file). Raises TlsSetupError
    for a bad name or a folder it cannot use.
    """
    wanted = normalize_names(names if names is not None else default_names())
    now = now or dt.datetime.now(dt.timezone.utc)
    directory = Path(directory).resolve()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(directory / ".lock"):
            files = LocalTls(directory, wanted)
            ca = _load_ca(files, now)
            created_ca = ca is None
            if ca is None:
                ca = _create_ca(files, now)
            reason = "the certificate authority is new" if created_ca else _why_reissue(files, ca[0], wanted, now)
            if reason is not None:
                _issue_server(files, ca, wanted, now)
            _write_bundle(files)
    except OSError as exc:
        raise TlsSetupError(f"cannot set up TLS files in {directory}: {exc}") from exc
    return LocalTls(directory, wanted, created_ca=created_ca, issued_server=reason)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _load_ca(files: LocalTls, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The CA on disk, or None when it is missing, unreadable, not matching its key or near its end."""
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        return None
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return None
    return cert, key


def _why_reissue(files: LocalTls, ca: x509.Certificate, wanted: tuple[str, ...], now: dt.datetime) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    except (OSError, ValueError):
        return "there was none"
    if cert.public_key() != key.public_key():
        return "its key does not match"
    if cert.issuer != ca.subject or not _signed_by(cert, ca):
        return "it was not signed by this certificate authority"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    if _names_of(cert) != set(wanted):
        return f"its names were {', '.join(sorted(_names_of(cert)))}"
    return None


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):  # TypeError: a key type that cannot have signed it
        return False
    return True


def _create_ca(files: LocalTls, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A distinct name per CA: a client holding an older CA of the same name would otherwise be confused.
    name = _name(f"motionserve local CA {socket.gethostname()} {now:%Y-%m-%d} {os.urandom(3).hex()}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(files.ca_key, _key_pem(key))
    _write_public(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue_server(files: LocalTls, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], names: tuple[str, ...], now: dt.datetime) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))  # for people reading it; clients check the SAN only
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(files.server_key, _key_pem(key))
    _write_public(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))


def _write_bundle(files: LocalTls) -> None:
    """ca-bundle.pem: the public roots, then the local CA (rewritten at every start: certifi updates)."""
    import certifi

    roots = Path(certifi.where()).read_bytes()
    _write_public(files.ca_bundle, roots.rstrip(b"\n") + b"\n" + files.ca_cert.read_bytes())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """Written 0600 from the start (never readable by others, even for a moment), then moved into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)  # an older tmp file may have had other bits
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# -- what clients need ----------------------------------------------------------------------------


def client_host(bind_host: str, port: int, names: Sequence[str]) -> str:
    """`host:port` as clients on this machine type it: the bind address, or for a wildcard bind a
    loopback name the certificate holds."""
    host = bind_host.strip("[]")
    if host in WILDCARD_HOSTS:
        host = next((n for n in ("127.0.0.1", "localhost", "::1") if n in names), names[0])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def client_lines(files: LocalTls, host_port: str, key_file: Path) -> list[str]:
    """The lines an operator pastes into a shell (and a Python program) to use the official clients.

    The key is named by its file, never printed: terminals end up in logs and screen shares.
    """
    base = f"https://{host_port}"
    key_line = f'export FAL_KEY="$(cat {_shell_quote(str(key_file.resolve()))})"'
    if not key_file.exists():  # `tls init` before the first start, or a fleet node that did not make the key
        key_line = f"# {key_line}   (written by the first `motionserve serve`; or a key from `motionserve keys create`)"
    return [
        f"HTTPS with a local certificate authority ({files.ca_cert}) for {', '.join(files.names)}.",
        "The official clients, in their shell:",
        "",
        key_line,
        f"export FAL_RUN_HOST={host_port}/run",
        f"export FAL_QUEUE_RUN_HOST={host_port}/queue",
        f"export SSL_CERT_FILE={_shell_quote(str(files.ca_bundle))}",
        f"export NODE_EXTRA_CA_CERTS={_shell_quote(str(files.ca_cert))}",
        "",
        "Python uploads (fal_client.upload_file) also need, after `import fal_client`:",
        "",
        f'fal_client.client.REST_URL = "{base}/rest"',
        f'fal_client.client.CDN_URL = "{base}/cdn"',
        "",
        "JavaScript (@fal-ai/client): a custom fetch that rewrites https://fal.run/, https://queue.fal.run/ and",
        f"https://rest.fal.ai/ to {base}/run/, {base}/queue/ and {base}/rest/ (see the README).",
    ]


def _shell_quote(text: str) -> str:
    """Bare when safe (the common case reads better), else single-quoted for sh."""
    if re.fullmatch(r"[A-Za-z0-9_./:@%+=,-]+", text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"
