"""Test certificates and node-authentication keys for a local (or trial) deployment.

Flower 1.42 serves the SuperLink's Fleet, Control and Runtime APIs on one TLS port. The
SuperLink takes a CA certificate, a server certificate and its key (``--ssl-ca-certfile``,
``--ssl-certfile``, ``--ssl-keyfile``); a SuperNode trusts the CA (``--root-certificates``).
With ``--enable-supernode-auth`` a SuperNode must sign with a NIST-curve EC key in OpenSSH
format (``--auth-supernode-private-key``) whose public half was registered beforehand
(``flwr supernode register KEY.pub <connection>``). :func:`write_certificates` makes all
of these for a local trial; a real deployment uses its own PKI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedll.atomic import atomic_path
from fedll.errors import ConfigError
from fedll.names import is_simple_name, rule_for

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
MAX_DAYS = 36_500
"""The longest validity of a test certificate (100 years; X.509 dates end with the year
9999, and a later date is an OverflowError)."""


@dataclass(frozen=True)
class Certificates:
    """The files :func:`write_certificates` wrote; ``keys``: site -> (private, public) key."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    keys: dict[str, tuple[Path, Path]]


def write_certificates(
    out: Path,
    sites: Sequence[str] = (),
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 365,
    overwrite: bool = False,
) -> Certificates:
    """A test CA, a SuperLink certificate for ``hosts`` and one node-auth key pair per site.

    Writes ``ca.crt``/``ca.key``, ``server.pem``/``server.key`` (ECDSA P-256, the server
    certificate valid for every name and IP address in ``hosts``) and ``<site>.key`` /
    ``<site>.pub`` (ECDSA P-384 in OpenSSH format, as Flower's node authentication reads
    them). Private keys are written with mode 0600. Existing files are kept unless
    ``overwrite``: a key is never replaced silently.
    """
    _check_request(sites, hosts, days)
    out = Path(out)
    files = Certificates(
        ca_cert=out / "ca.crt",
        ca_key=out / "ca.key",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        keys={s: (out / f"{s}.key", out / f"{s}.pub") for s in sites},
    )
    targets = [files.ca_cert, files.ca_key, files.server_cert, files.server_key]
    targets += [p for pair in files.keys.values() for p in pair]
    if not overwrite and (existing := [p for p in targets if p.exists()]):
        raise ConfigError(f"certs: {existing[0]} exists (pass --overwrite to replace the set)")
    out.mkdir(parents=True, exist_ok=True)

    now = dt.datetime.now(dt.timezone.utc)
    valid = (now - dt.timedelta(minutes=5), now + dt.timedelta(days=days))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedll test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), valid)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _server_certificate(server_key, hosts, ca_key, ca_name, ca_ski, valid)
    pem = serialization.Encoding.PEM
    _write(files.ca_cert, ca_cert.public_bytes(pem))
    _write(files.ca_key, _pkcs8(ca_key), private=True)
    _write(files.server_cert, server_cert.public_bytes(pem))
    _write(files.server_key, _pkcs8(server_key), private=True)
    for private_path, public_path in files.keys.values():
        _write_node_keys(private_path, public_path)
    return files


def _check_request(sites: Sequence[str], hosts: Sequence[str], days: int) -> None:
    """ConfigError for days out of range, no host, a host that is neither an IP address nor
    a host name, or a site name that cannot name a key file or is given twice."""
    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"certs: days must be in 1..{MAX_DAYS}, got {days}")
    if not hosts:
        raise ConfigError("certs: at least one host name or IP address is needed")
    for host in hosts:
        if not _valid_host(host):
            raise ConfigError(f"certs: --host {host!r} is neither an IP address nor a host name")
    for site in sites:
        if not is_simple_name(site):
            raise ConfigError(
                f"certs: site name {site!r} cannot name a key file ({rule_for(site)})"
            )
    if len(set(sites)) != len(sites):
        raise ConfigError(f"certs: a site is named twice in {', '.join(sites)}")


def _server_certificate(
    server_key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    ca_ski: x509.SubjectKeyIdentifier,
    valid: tuple[dt.datetime, dt.datetime],
) -> x509.Certificate:
    """The SuperLink's TLS certificate, signed by the CA, valid for every name and IP address
    in ``hosts`` (the first names it)."""
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    return (
        _builder(server_name, ca_name, server_key.public_key(), valid)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write_node_keys(private_path: Path, public_path: Path) -> None:
    """A site's node-auth key pair: ECDSA P-384 in OpenSSH format (the private key 0600)."""
    pem = serialization.Encoding.PEM
    key = ec.generate_private_key(ec.SECP384R1())
    openssh = key.private_bytes(
        pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    _write(private_path, openssh, private=True)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(public_path, public + b"\n")


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    valid: tuple[dt.datetime, dt.datetime],
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _valid_host(host: str) -> bool:
    """An IP address, or a DNS name of 1-63 character labels of letters, digits and hyphens
    (RFC 1123), at most 253 characters."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host.removesuffix(".")
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
