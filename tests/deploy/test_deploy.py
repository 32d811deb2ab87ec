"""Deployment without Flower processes: test certificates and node keys (checked with a real
TLS handshake and with Flower's own key readers), per-site data folders, the checks a site's
node config gets, the ``fedll site`` command, and a federation that goes on without a failed
site. The same apps against real SuperLink and SuperNode processes: ``test_flwr_deploy.py``.
"""

from __future__ import annotations

import logging
import shlex
import socket
import ssl
import stat
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from typer.testing import CliRunner

from fedll.cli import app
from fedll.config import dump_scenario, expand_trials, load_scenario
from fedll.data.prepare import prepare_cohort
from fedll.data.site import site_from_node_config
from fedll.deploy.certs import write_certificates
from fedll.deploy.site_data import write_site_manifests
from fedll.deploy.supernode import load_auth_key, node_config_arg, supernode_command
from fedll.errors import ConfigError, DataError
from fedll.federation.inprocess import InProcessGrid, run_server_app
from fedll.run.execute import run_trial
from fedll.run.store import TrialFiles
from sites.client_app import app as client_app
from strategies.handshake import SiteInfo, match_sites
from strategies.server_app import make_server_app

# Two rounds (each site's two patients arrive at once), trained enough that Dice moves (and
# T2 is partly forgotten after the FLAIR round).
TWO_ROUNDS = {
    "stream": {"arrival_batch": 2},
    "models": {"dycnn": None},
    "training": {"epochs": 6, "batch_size": 2, "lr": 0.01},
}


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *names: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ certificates and keys


def _handshake(certs, server_hostname: str, cafile: Path | None) -> None:
    """A TLS handshake with a server presenting ``server.pem``; raises ssl.SSLError."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.server_cert, certs.server_key)
    client_ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            tls.sendall(b"x")
    finally:
        thread.join(timeout=10)
        listener.close()


def test_the_server_certificate_verifies_against_the_ca_for_loopback(tmp_path):
    certs = write_certificates(tmp_path / "certs", ["hosp-a"])

    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    # a strict client (Python's default context) accepts it for both names, with the CA only
    _handshake(certs, "127.0.0.1", certs.ca_cert)
    _handshake(certs, "localhost", certs.ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, "127.0.0.1", None)  # the system CAs do not know the test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, "coordinator.example", certs.ca_cert)  # not a name it holds


def test_node_keys_are_what_flower_reads(tmp_path):
    certs = write_certificates(tmp_path, ["hosp-a", "hosp-b"], hosts=["10.0.0.5", "link.example"])

    assert set(certs.keys) == {"hosp-a", "hosp-b"}
    private, public = certs.keys["hosp-a"]
    key = load_auth_key(private)  # as flower-supernode's --auth-supernode-private-key reads it
    assert isinstance(key.curve, ec.SECP384R1)
    registered = try_load_public_key(public)  # as `flwr supernode register` reads it
    derived = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert registered == derived
    assert certs.keys["hosp-b"][1].read_bytes() != public.read_bytes()
    for path in (private, certs.ca_key, certs.server_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert names.get_values_for_type(x509.DNSName) == ["link.example"]


def test_certificates_are_never_replaced_silently(tmp_path):
    first = write_certificates(tmp_path, ["hosp-a"])
    key = first.keys["hosp-a"][0].read_bytes()
    with pytest.raises(ConfigError, match="exists"):
        write_certificates(tmp_path, ["hosp-a"])
    assert first.keys["hosp-a"][0].read_bytes() == key
    write_certificates(tmp_path, ["hosp-a"], overwrite=True)
    assert first.keys["hosp-a"][0].read_bytes() != key


@pytest.mark.parametrize(
    ("sites", "message"),
    [(["../evil"], "cannot name a key file"), (["a", "a"], "named twice")],
)
def test_bad_site_names_for_keys(tmp_path, sites, message):
    with pytest.raises(ConfigError, match=message):
        write_certificates(tmp_path, sites)


def test_certs_command(tmp_path):
    result = invoke("certs", "--out", tmp_path / "c", "--sites", "hosp-a, hosp-b")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.crt",
        "ca.key",
        "hosp-a.key",
        "hosp-a.pub",
        "hosp-b.key",
        "hosp-b.pub",
        "server.key",
        "server.pem",
    ]
    one_line_error(invoke("certs", "--out", tmp_path / "c"), "exists", "--overwrite")


@pytest.mark.parametrize("days", ["0", "10000000"])
def test_certs_bounds_the_days_in_one_line(tmp_path, days):
    # ten million days pass the year 9999: an OverflowError with a traceback before
    result = invoke("certs", "--out", tmp_path / "c", "--days", days)
    one_line_error(result, f"certs: days must be in 1..36500, got {days}")
    assert not (tmp_path / "c").exists()


def test_a_bad_auth_key_is_named(tmp_path):
    (tmp_path / "k").write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted OpenSSH private key"):
        load_auth_key(tmp_path / "k")
    with pytest.raises(ConfigError, match="no such key file"):
        load_auth_key(tmp_path / "missing")


# ------------------------------------------------------------------ a site's data and config


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory, make_scenario):
    """A run directory of the two-round tiny scenario, and per-site manifests of its split."""
    root = tmp_path_factory.mktemp("deploy")
    scenario = load_scenario(make_scenario(root / "tiny.yaml", TWO_ROUNDS))
    run_dir = root / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
    prepared = prepare_cohort(scenario)
    prepared.write(run_dir / "cohort.json")
    manifests = write_site_manifests(prepared, root / "sites")
    return scenario, prepared, run_dir, manifests


def test_a_site_folder_holds_exactly_the_cases_of_the_split(prepared_run):
    scenario, prepared, _, manifests = prepared_run
    assert set(manifests) == {s.name for s in scenario.sites}
    for spec in scenario.sites:
        site = site_from_node_config(
            {"site": spec.name, "modality": spec.modality, "data-dir": str(manifests[spec.name])}
        )
        expected = prepared.sites[spec.name]
        assert [r.patient for r in site.records] == [r.patient for r in expected]
        assert [r.image.resolve() for r in site.records] == [r.image.resolve() for r in expected]
        assert [r.patient for r in expected] == sorted(r.patient for r in expected)


def test_deployed_node_configs_give_the_simulated_dice(
    prepared_run, tmp_path, restore_torch_threads
):
    """The ServerApp and ClientApp in-process: nodes that read their cases from a data dir
    (deployment) train exactly as nodes mapped to the split by partition id (simulation)."""
    scenario, _, run_dir, manifests = prepared_run
    simulated, deployed = tmp_path / "sim", tmp_path / "dep"
    for target in (simulated, deployed):
        target.mkdir()
        for name in ("scenario.yaml", "cohort.json"):
            (target / name).write_text((run_dir / name).read_text())
    trial = expand_trials(scenario)[0]

    expected = pd.read_csv(run_trial(simulated, 0, threads=1))
    run_config = {
        "scenario": str(deployed / "scenario.yaml"),
        "trial": 0,
        "run-dir": str(deployed),
        "threads": 1,
        "collect": True,
    }
    node_configs = [
        {"site": s.name, "modality": s.modality, "data-dir": str(manifests[s.name].parent)}
        for s in reversed(scenario.sites)  # node order plays no part
    ]
    grid = InProcessGrid(client_app, node_configs, run_config, seed=7)
    run_server_app(make_server_app(), grid, run_config)
    got = pd.read_csv(TrialFiles.of(deployed, trial.trial_id).results)

    assert sorted(expected["round"].unique()) == [0, 1, 2]
    assert (expected["dice"] > 0).any()
    pd.testing.assert_frame_equal(got, expected)
    # collect=True: results, the resolved scenario and the report, as `fedll run` writes them
    for name in ("results.csv", "attention.csv", "tables/forgetting.md", "scenario.yaml"):
        assert (deployed / name).exists(), name
    assert list((deployed / "plots").glob("*.png"))


def test_node_config_errors_name_the_site_and_the_problem(prepared_run, tmp_path):
    _, _, _, manifests = prepared_run
    t2 = str(manifests["hospital-t2"].parent)
    (tmp_path / "empty").mkdir()
    cases = [
        ({"site": "h", "modality": "t2"}, ConfigError, "missing data-dir"),
        ({"modality": "t2", "data-dir": t2}, ConfigError, "missing site"),
        ({"site": " ", "modality": "t2", "data-dir": t2}, ConfigError, "site is empty"),
        ({"site": "h", "modality": "t1", "data-dir": t2}, ConfigError, "site h: modality 't1'"),
        ({"site": "h", "modality": "t2", "data-dir": "/no/such"}, ConfigError, "does not exist"),
        ({"site": "h", "modality": "t2", "data-dir": str(tmp_path / "empty")}, DataError, "h:"),
        ({"site": "h", "modality": "flair", "data-dir": t2}, DataError, "no flair training"),
    ]
    for config, error, message in cases:
        with pytest.raises(error, match=message):
            site_from_node_config(config)


def test_node_config_text_is_what_flower_parses():
    from flwr.common.config import parse_config_args

    config = {"site": "hosp a", "modality": "t2", "data-dir": r"C:\data\t2"}
    assert parse_config_args([node_config_arg(config)]) == config
    with pytest.raises(ConfigError, match="quote"):
        node_config_arg({"data-dir": 'a"b'})


# ------------------------------------------------------------------ `fedll site`


def test_site_checks_the_data_then_prints_the_supernode_command(prepared_run, tmp_path):
    _, _, _, manifests = prepared_run
    certs = write_certificates(tmp_path / "certs", ["hospital-t2"])
    data = manifests["hospital-t2"].parent
    args = [
        "site",
        "--site",
        "hospital-t2",
        "--modality",
        "T2",
        "--data-dir",
        data,
        "--superlink",
        "127.0.0.1:9092",
        "--root-certificates",
        certs.ca_cert,
        "--auth-key",
        certs.keys["hospital-t2"][0],
        "--runtime-port",
        "9100",
        "--dry-run",
        "--",
        "--max-retries",
        "3",
    ]
    result = invoke(*args)

    assert result.exit_code == 0, result.output
    assert f"site hospital-t2: 2 t2 training cases in {data}" in result.stderr
    command = shlex.split(result.stdout)
    assert Path(command[0]).name == "flower-supernode"
    assert command[1:] == [
        "--superlink",
        "127.0.0.1:9092",
        "--root-certificates",
        str(certs.ca_cert.resolve()),
        "--auth-supernode-private-key",
        str(certs.keys["hospital-t2"][0].resolve()),
        "--port",
        "9100",
        "--node-config",
        f'site="hospital-t2" modality="t2" data-dir="{data}"',
        "--max-retries",
        "3",
    ]


def test_site_passes_its_device_and_refuses_one_it_lacks(prepared_run):
    _, _, _, manifests = prepared_run
    data = manifests["hospital-t2"].parent
    base = ["site", "--site", "hospital-t2", "--modality", "t2", "--data-dir", data,
            "--superlink", "127.0.0.1:9092", "--insecure", "--dry-run"]  # fmt: skip
    result = invoke(*base, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert 'device="cpu"' in shlex.split(result.stdout)[-1]
    result = invoke(*base, "--device", "tpu")
    assert result.exit_code == 2
    assert "--device: 'tpu' is not a device" in result.stderr


def test_site_passes_its_state_dir_and_refuses_one_it_cannot_write(prepared_run, tmp_path):
    _, _, _, manifests = prepared_run
    data = manifests["hospital-t2"].parent
    base = ["site", "--site", "hospital-t2", "--modality", "t2", "--data-dir", data,
            "--superlink", "127.0.0.1:9092", "--insecure", "--dry-run"]  # fmt: skip
    result = invoke(*base, "--state-dir", tmp_path / "kept")
    assert result.exit_code == 0, result.output
    assert f'state-dir="{tmp_path / "kept"}"' in shlex.split(result.stdout)[-1]
    assert not (tmp_path / "kept").exists()  # checked, not created
    (tmp_path / "file").write_text("")
    one_line_error(invoke(*base, "--state-dir", tmp_path / "file" / "kept"), "--state-dir",
                   "is a file, not a directory")  # fmt: skip


def test_site_runs_flower_supernode_in_its_place(prepared_run, monkeypatch):
    _, _, _, manifests = prepared_run
    calls = []
    monkeypatch.setattr("os.execvp", lambda path, argv: calls.append((path, argv)))
    data = manifests["hospital-flair"].parent
    result = invoke(
        *("site", "--site", "hospital-flair", "--modality", "flair", "--data-dir", data),
        *("--superlink", "127.0.0.1:9092", "--insecure"),
    )
    assert result.exit_code == 0, result.output
    [(path, argv)] = calls
    assert path == argv[0] and Path(path).name == "flower-supernode"
    assert argv[1:4] == ["--superlink", "127.0.0.1:9092", "--insecure"]


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"--data-dir": "/no/such/dir"}, ["data-dir", "/no/such/dir", "does not exist"]),
        ({"--modality": "t1"}, ["modality 't1'"]),
        ({"--modality": "flair"}, ["no flair training cases"]),
        ({"--root-certificates": None, "--insecure": ""}, ["--auth-key needs TLS"]),
        ({"--root-certificates": None}, ["--root-certificates", "--insecure"]),
        ({"--root-certificates": "/no/ca.crt"}, ["/no/ca.crt", "is not a file"]),
        ({"--auth-key": "/no/key"}, ["/no/key", "no such key file"]),
        ({"--site": "../hospital"}, ["--site '../hospital' is not a simple name"]),
        ({"--superlink": "127.0.0.1"}, ["--superlink '127.0.0.1': expected HOST:PORT"]),
        ({"--superlink": "127.0.0.1:70000"}, ["port 70000 is outside 1..65535"]),
        ({"--runtime-port": "99999"}, ["--runtime-port: port 99999 is outside 1..65535"]),
        ({"--runtime-port": "0"}, ["--runtime-port: port 0 is outside 1..65535"]),
        ({"--site": "hôpital"}, ["is not a simple name", "names outside ASCII are refused"]),
        ({"--root-certificates": "NOT-PEM"}, ["is not a PEM certificate"]),
        ({"--cache-dir": "A-FILE"}, ["--cache-dir", "is a file, not a directory"]),
    ],
)
def test_site_with_bad_input_exits_2_before_starting_anything(
    prepared_run, tmp_path, monkeypatch, change, names
):
    _, _, _, manifests = prepared_run
    monkeypatch.setattr("os.execvp", lambda *a: pytest.fail("flower-supernode was started"))
    certs = write_certificates(tmp_path / "certs", ["hospital-t2"])
    options = {
        "--site": "hospital-t2",
        "--modality": "t2",
        "--data-dir": str(manifests["hospital-t2"].parent),
        "--superlink": "127.0.0.1:9092",
        "--root-certificates": str(certs.ca_cert),
        "--auth-key": str(certs.keys["hospital-t2"][0]),
        **change,
    }
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("-----BEGIN NOTHING-----\n")
    options = {
        key: {"NOT-PEM": str(not_pem), "A-FILE": str(not_pem)}.get(value, value) if value else value
        for key, value in options.items()
    }
    args = ["site"]
    for key, value in options.items():
        if value is not None:
            args += [key, value] if value else [key]
    one_line_error(invoke(*args), *names)


def test_supernode_command_without_tls_refuses_an_auth_key():
    with pytest.raises(ConfigError, match="needs TLS"):
        supernode_command("flower-supernode", "h:1", {}, auth_key=Path("k"))


def test_site_data_command(tmp_path, make_scenario):
    scenario = make_scenario(tmp_path / "tiny.yaml")
    result = invoke("site-data", scenario, "--out", tmp_path / "sites")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "sites").iterdir()) == [
        "hospital-flair",
        "hospital-t2",
    ]
    one_line_error(invoke("site-data", tmp_path / "none.yaml", "--out", tmp_path), "none.yaml")


# ------------------------------------------------------------------ the server goes on


def _info(node: int, name: str, modality: str, cases: int = 2) -> SiteInfo:
    return SiteInfo(node_id=node, name=name, modality=modality, num_cases=cases)


def test_match_sites_leaves_out_what_does_not_fit_and_says_why(prepared_run, caplog):
    scenario = prepared_run[0]
    infos = [
        _info(11, "hospital-t2", "flair"),  # wrong modality
        _info(12, "hospital-flair", "flair"),
        _info(13, "hospital-x", "t2"),  # not in the scenario
    ]
    with caplog.at_level(logging.ERROR, logger="strategies.handshake"):
        bound = match_sites(scenario, infos)
    assert list(bound) == ["hospital-flair"]
    assert "site hospital-t2 (sites.0) (node 11) holds flair, the scenario says t2" in caplog.text
    assert "node 13 says it is site hospital-x" in caplog.text

    caplog.clear()
    with (
        caplog.at_level(logging.ERROR, logger="strategies.handshake"),
        pytest.raises(ConfigError, match="none of the scenario's sites joined"),
    ):
        match_sites(scenario, [_info(12, "hospital-flair", "flair", cases=1)])
    assert "site hospital-t2 (sites.0) did not join" in caplog.text
    assert "site hospital-flair (sites.1) (node 12) holds 1 cases, the scenario asks 2" in (
        caplog.text
    )


@pytest.mark.parametrize("broken", ["hospital-t2", "hospital-flair"])
def test_a_site_with_a_bad_node_config_is_left_out_and_recorded(
    prepared_run, tmp_path, caplog, restore_torch_threads, broken
):
    """The broken site's ClientApp raises on ``query.meta``; the server logs the node id and the
    reason, runs the stream of the other site (whichever modality the ordering starts with)
    and records the missing site in round 0's ``failed``."""
    scenario, _, run_dir, manifests = prepared_run
    for name in ("scenario.yaml", "cohort.json"):
        (tmp_path / name).write_text((run_dir / name).read_text())
    run_config = {"scenario": str(tmp_path / "scenario.yaml"), "run-dir": str(tmp_path)}
    missing = tmp_path / "not-mounted"
    node_configs = [
        {
            "site": s.name,
            "modality": s.modality,
            "data-dir": str(missing if s.name == broken else manifests[s.name].parent),
        }
        for s in scenario.sites
    ]
    grid = InProcessGrid(client_app, node_configs, run_config, seed=3)
    with caplog.at_level(logging.ERROR):
        run_server_app(make_server_app(), grid, run_config)

    results = pd.read_csv(tmp_path / "results.csv", keep_default_na=False)
    healthy = next(s for s in scenario.sites if s.name != broken)
    assert sorted(results["round"].unique()) == [0, 1]  # one arrival of the healthy site
    assert set(results.loc[results["round"] == 1, "sites"]) == {healthy.name}
    assert set(results.loc[results["round"] == 0, "failed"]) == {broken}
    assert set(results.loc[results["round"] == 1, "failed"]) == {""}
    assert "could not describe itself" in caplog.text
    assert f"site {broken}: data-dir {missing} does not exist" in caplog.text
    assert f"site {broken} (sites." in caplog.text and "did not join" in caplog.text


def test_discovery_goes_on_with_the_sites_that_connected(caplog):
    """A site whose SuperNode never starts: after the join timeout the others go ahead."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from strategies.handshake import discover_sites

    class Answering:
        """Stands in for the ClientApp: answers ``query.meta`` with partition-named sites."""

        def __call__(self, message, context):
            from flwr.app import ConfigRecord, Message, RecordDict

            pid = int(context.node_config["partition-id"])
            meta = ConfigRecord({"site": f"s{pid}", "modality": "t2", "num-cases": 1})
            return Message(RecordDict({"meta": meta}), reply_to=message)

    grid = InProcessGrid(Answering(), [{"partition-id": 0}, {"partition-id": 1}], {}, seed=1)
    server = ServerApp()
    found: list = []

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        found.extend(discover_sites(grid, expected=3, timeout=0.2))

    with caplog.at_level(logging.ERROR, logger="strategies.handshake"):
        run_server_app(server, grid, {})
    assert [i.name for i in found] == ["s0", "s1"]
    assert "only 2 of 3 sites connected within 0s; going on with them" in caplog.text
