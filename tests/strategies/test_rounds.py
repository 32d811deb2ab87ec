"""``execution.round_timeout``: a round waits for its sites to connect, then for the replies,
within the timeout; a reply that comes too late is recorded as the site's failure and
discarded, and the train messages live no longer than the timeout."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pandas as pd
import pytest
import torch
from flwr.app import Message, RecordDict

from fedll.config import load_scenario
from fedll.data.prepare import prepare_cohort
from fedll.deploy.site_data import write_site_manifests
from fedll.federation.flower_private import set_task_identity
from fedll.federation.inprocess import InProcessGrid, run_server_app
from sites.client_app import app as client_app
from strategies.rounds import TimedGrid
from strategies.server_app import make_server_app


class Connecting:
    """A grid whose nodes connect one poll after another; it records what it is sent."""

    def __init__(self, connected: list[set[int]]) -> None:
        self.connected = connected
        self.polls = 0
        self.sent: list[tuple[list[int], float | None]] = []

    def get_node_ids(self) -> list[int]:
        self.polls += 1
        return sorted(self.connected[min(self.polls, len(self.connected)) - 1])

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        self.sent.append(([m.metadata.dst_node_id for m in messages], timeout))
        return []


def messages(*nodes: int) -> list[Message]:
    set_task_identity(run_id=1, node_id=1, task_id=1)
    return [Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes]


def test_a_round_waits_for_its_sites_to_connect_within_its_timeout(caplog):
    grid = Connecting([{11}, {11}, {11, 12}])
    timed = TimedGrid(grid, {11: "a", 12: "b"}, poll_s=0.01)
    with caplog.at_level(logging.WARNING, logger="strategies.rounds"):
        timed.send_and_receive(messages(11, 12), timeout=30.0)
    assert grid.polls == 3
    [(nodes, left)] = grid.sent
    assert nodes == [11, 12] and 29.0 < left < 30.0  # what is left of the round's time
    assert "waiting for site(s) b to connect" in caplog.text
    assert "site(s) b connected; the round goes on" in caplog.text

    grid = Connecting([{11}])  # b never comes back: sent when the time is up, no time left
    with caplog.at_level(logging.WARNING, logger="strategies.rounds"):
        TimedGrid(grid, {11: "a"}, poll_s=0.01).send_and_receive(messages(11, 12), timeout=0.05)
    assert grid.sent == [([11, 12], 0.0)]
    assert "site(s) 12 did not connect within the round's timeout" in caplog.text

    grid = Connecting([{11, 12}])  # all there: no wait
    TimedGrid(grid, {}).send_and_receive(messages(11, 12), timeout=None)
    assert grid.polls == 1 and grid.sent == [([11, 12], None)]


class LateFlair(InProcessGrid):
    """An in-process grid where the FLAIR site's reply to the first train round takes
    ``LATE_S``: past a shorter timeout it is not returned (the site trained all the same)."""

    LATE_S = 60.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rounds: list[tuple[float | None, list[float]]] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        if not messages or messages[0].metadata.message_type != "train":
            return replies
        self.rounds.append((timeout, [m.metadata.ttl for m in messages]))
        (flair,) = (n for n in self.get_node_ids() if self.node_context(n).node_config["site"]
                    == "hospital-flair")  # fmt: skip
        late = {m.metadata.message_id for m in messages if m.metadata.dst_node_id == flair}
        if len(self.rounds) == 1 and (timeout is None or timeout < self.LATE_S):
            return [r for r in replies if r.metadata.reply_to_message_id not in late]
        return replies


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_reply_after_the_round_timeout_is_a_failure_of_that_round(
    tmp_path, make_scenario, caplog, restore_torch_threads
):
    updates = {
        "stream": {"arrivals_per_round": 2},  # two rounds, both sites in each
        "models": {"dycnn": None},
        "execution": {"round_timeout": 5},
    }
    source = make_scenario(tmp_path / "scenario.yaml", updates)
    scenario = load_scenario(source)
    manifests = write_site_manifests(prepare_cohort(scenario), tmp_path / "sites")
    node_configs = [
        {"site": s.name, "modality": s.modality, "data-dir": str(manifests[s.name].parent)}
        for s in scenario.sites
    ]
    run_config = {"scenario": str(source), "run-dir": str(tmp_path / "run"), "threads": 1}
    grid = LateFlair(client_app, node_configs, run_config, seed=3)
    with caplog.at_level(logging.WARNING):
        run_server_app(make_server_app(), grid, run_config)

    assert grid.rounds == [(5, [5, 5]), (5, [5, 5])]  # the timeout, and the messages' TTL
    results = pd.read_csv(tmp_path / "run" / "results.csv", keep_default_na=False)
    failed = results.groupby("round")["failed"].first().to_dict()
    assert failed == {0: "", 1: "hospital-flair", 2: ""}
    assert "round 1: site hospital-flair failed: no reply before the timeout" in caplog.text
