"""Differential privacy end to end on the tiny scenario (two rounds, both sites in each): the
updates of a client-side DP trial are clipped at the sites, each trial's model is finite, the
ε of an accounted trial is Flower's accountant's after every round, in results.csv and the
forgetting table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from fedll.config import dump_scenario, load_scenario
from fedll.config.grid import fingerprints
from fedll.models.saved import read_model
from fedll.report import forgetting_table, format_table
from fedll.run.collect import collect
from fedll.run.sweep import SweepOptions, run_sweep
from strategies.lifelong import Lifelong
from strategies.privacy import ClientSideFixedClipping, ServerSideFixedClipping

pytestmark = pytest.mark.slow

CLIENT_NORM = 0.05
STRATEGIES = [
    "fedavg",
    {"name": "fedavg", "dp": {"noise_multiplier": 1.0, "clipping_norm": 1.0}},
    {"name": "fedprox", "mu": 0.1,
     "dp": {"side": "client", "noise_multiplier": 0.5, "clipping_norm": CLIENT_NORM}},
    {"name": "fedmedian", "dp": {"side": "client", "clipping": "adaptive",
                                 "noise_multiplier": 0.1, "clipped_count_stddev": 1.0}},
]  # fmt: skip
LABELS = {
    "plain": "fedavg",
    "server": "fedavg-dp-server-fixed-z1.0-c1.0",
    "client": "fedprox-mu0.1-dp-client-fixed-z0.5-c0.05",
    "adaptive": "fedmedian-dp-client-adaptive-z0.1-sb1.0",
}


@pytest.fixture
def update_norms(monkeypatch):
    """The L2 norm of each update (its floating tensors) as the server receives it, by the
    type of the trial's DP wrapper."""
    norms: dict[type, list[float]] = {}
    aggregate = Lifelong.aggregate_train

    def recording(self, server_round, replies):
        replies = list(replies)
        for reply in replies:
            state = {k: v.numpy() for k, v in reply.content["arrays"].items()}
            floating = [k for k, v in self.current.items() if np.issubdtype(v.dtype, np.floating)]
            squared = sum(float(np.sum((state[k] - self.current[k]) ** 2)) for k in floating)
            norms.setdefault(type(self.rule), []).append(squared**0.5)
        return aggregate(self, server_round, replies)

    monkeypatch.setattr(Lifelong, "aggregate_train", recording)
    return norms


def test_private_trials_end_to_end(make_scenario, tmp_path, update_norms):
    threads = torch.get_num_threads()
    updates = {
        "stream": {"arrivals_per_round": 2},
        "training": {"epochs": 1, "batch_size": 8, "lr": 0.01},
        "models": {"dycnn": None},  # the static U-Net: BatchNorm, its counters int64
        "strategies": STRATEGIES,
    }
    scenario = load_scenario(make_scenario(tmp_path / "s.yaml", updates))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
    try:
        summary = run_sweep(run_dir, SweepOptions(backend="local"))
    finally:
        torch.set_num_threads(threads)
    assert summary.failed == {}
    results, _ = collect(run_dir, fingerprints(scenario))
    assert sorted(results["strategy"].unique()) == sorted(LABELS.values())
    assert (results["failed"].fillna("") == "").all()
    assert (results["rejected"].fillna("") == "").all()

    # clipped at the sites: every update the server got is within the norm; the server-side
    # trial's updates arrive unclipped
    client = update_norms[ClientSideFixedClipping]
    assert len(client) == 4 and max(client) <= CLIENT_NORM * (1 + 1e-5)
    assert max(update_norms[ServerSideFixedClipping]) > CLIENT_NORM

    for path in sorted((run_dir / "models").glob("*.safetensors")):
        module = read_model(path).module
        assert all(torch.isfinite(v).all() for v in module.state_dict().values()), path.name

    # ε after every round: Flower's accountant over one Gaussian release a round
    by_round = results.groupby(["strategy", "round"])[["epsilon", "dp_delta"]].first()
    config = PrivacyConfig(
        1e-5, 2, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION
    )
    for label, z in ((LABELS["server"], 1.0), (LABELS["client"], 0.5)):
        reference, expected = RdpAccountant(config), [0.0]
        for _ in (1, 2):
            reference.compose(GaussianPrivacyEvent(z, 2, 2))
            expected.append(reference.get_epsilon(1e-5))
        spent = by_round.loc[label, "epsilon"].astype(float).tolist()
        np.testing.assert_allclose(spent, expected, rtol=1e-9)
        assert spent[0] < spent[1] < spent[2]
        assert set(by_round.loc[label, "dp_delta"].astype(float)) == {1e-5}
    for label in (LABELS["plain"], LABELS["adaptive"]):  # no accountant: empty
        assert pd.to_numeric(by_round.loc[label, "epsilon"]).isna().all()

    view = format_table(forgetting_table(results)).set_index("strategy")
    assert view.loc[LABELS["server"], "final ε"].tolist() == [f"{spent_of(by_round, 'server')}"] * 2
    assert view.loc[LABELS["plain"], "final ε"].tolist() == ["n/a", "n/a"]


def spent_of(by_round: pd.DataFrame, which: str) -> str:
    return f"{float(by_round.loc[(LABELS[which], 2), 'epsilon']):.3g}"
