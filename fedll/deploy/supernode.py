"""The ``flower-supernode`` command of a site, checked before anything starts.

:func:`site_command` is what ``fedll site`` runs: it reads the site's data folder as the
ClientApp will (:func:`fedll.data.site.site_from_node_config`), checks that the site can keep
its state where it will (:mod:`fedll.federation.site_state`), checks the TLS and node-authentication
files, and builds the argv.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedll.data.site import Site, site_from_node_config
from fedll.errors import ConfigError
from fedll.federation.site_state import check_state_dir, site_state_dir
from fedll.names import is_simple_name, rule_for
from fedll.run.device import resolve_device


def check_port(port: int, what: str) -> int:
    """``port`` when it is in 1..65535; ConfigError naming ``what``."""
    if not 0 < port < 65536:
        raise ConfigError(f"{what}: port {port} is outside 1..65535")
    return port


def check_host_port(address: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) with a port in 1..65535; ConfigError naming ``what``."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{what} {address!r}: expected HOST:PORT")
    return host, check_port(int(port), f"{what} {address!r}")


def load_ca_certificate(path: Path) -> x509.Certificate:
    """The CA certificate a SuperNode will trust, checked as a PEM certificate."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--root-certificates: {path} is not a file")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ConfigError(f"--root-certificates: {path} is not a PEM certificate") from None


def load_auth_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A SuperNode's node-auth private key, checked as Flower will read it (OpenSSH, EC)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such key file")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path}: not an unencrypted OpenSSH private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: Flower needs an EC (NIST P-curve) key, not {key.__class__}")
    return key


def node_config_arg(config: Mapping[str, str]) -> str:
    """``--node-config`` text: ``key="value"`` pairs (values quoted as TOML strings)."""
    pairs = []
    for key, value in config.items():
        if '"' in value or "\n" in value:
            raise ConfigError(f"--node-config: {key} {value!r} may not hold a quote or newline")
        pairs.append(f'{key}="{value.replace(chr(92), chr(92) * 2)}"')
    return " ".join(pairs)


def supernode_command(
    executable: str,
    superlink: str,
    node_config: Mapping[str, str],
    root_certificates: Path | None = None,
    auth_key: Path | None = None,
    runtime_port: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``flower-supernode`` argv for a site: TLS when ``root_certificates`` is given,
    else ``--insecure`` (node authentication needs TLS)."""
    if auth_key is not None and root_certificates is None:
        raise ConfigError("--auth-key needs TLS: give --root-certificates (the SuperLink's CA)")
    command = [executable, "--superlink", superlink]
    if root_certificates is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(root_certificates)]
    if auth_key is not None:
        command += ["--auth-supernode-private-key", str(auth_key)]
    if runtime_port is not None:
        command += ["--port", str(runtime_port)]
    command += ["--node-config", node_config_arg(node_config), *extra]
    return command


def site_command(
    name: str,
    modality: str,
    data_dir: Path,
    superlink: str,
    *,
    root_certificates: Path | None = None,
    insecure: bool = False,
    auth_key: Path | None = None,
    runtime_port: int | None = None,
    cache_dir: Path | None = None,
    state_dir: Path | None = None,
    device: str | None = None,
    extra: Sequence[str] = (),
) -> tuple[Site, list[str]]:
    """Check a site's data and files, and return it with its ``flower-supernode`` argv.

    ConfigError / DataError (one line) for a bad node config, a state dir (by default
    ``<data dir>/.fedll-state``) it cannot write, a device this machine lacks, no or both of
    TLS and ``insecure``, a missing CA file or an unusable node-auth key.
    """
    if not is_simple_name(name):
        raise ConfigError(f"--site {name!r} is not a simple name ({rule_for(name)})")
    check_host_port(superlink, "--superlink")
    if runtime_port is not None:
        check_port(runtime_port, "--runtime-port")
    config = {
        "site": name,
        "modality": modality.lower(),
        "data-dir": str(Path(data_dir).expanduser().resolve()),
    }
    if cache_dir is not None:
        cache = Path(cache_dir).expanduser().resolve()
        if cache.exists() and not cache.is_dir():
            raise ConfigError(f"--cache-dir: {cache} is a file, not a directory")
        config["cache-dir"] = str(cache)
    if state_dir is not None:
        config["state-dir"] = str(Path(state_dir).expanduser().resolve())
    if device is not None:
        resolve_device(device, key="--device")  # CUDA that this machine lacks: one line now
        config["device"] = device
    if insecure == (root_certificates is not None):
        raise ConfigError("give either --root-certificates CA (TLS) or --insecure")
    if root_certificates is not None:
        load_ca_certificate(root_certificates)
    if auth_key is not None:
        load_auth_key(auth_key)
    site = site_from_node_config(config)
    where = site_state_dir(config, {}, site.name)
    assert where is not None, "a node config with a data dir has a state dir"
    if state_dir is not None:
        check_state_dir(where, "--state-dir")
    else:
        try:
            check_state_dir(where, "the site's state dir")
        except ConfigError as error:
            raise ConfigError(f"{error} (a read-only data dir? give --state-dir)") from None
    executable = str(Path(sys.executable).with_name("flower-supernode"))
    if not Path(executable).exists():
        executable = shutil.which("flower-supernode") or "flower-supernode"
    command = supernode_command(
        executable,
        superlink,
        config,
        root_certificates=root_certificates.resolve() if root_certificates else None,
        auth_key=auth_key.expanduser().resolve() if auth_key else None,
        runtime_port=runtime_port,
        extra=extra,
    )
    return site, command
