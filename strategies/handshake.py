"""The federation's handshake: which node is which hospital (``query.meta``).

Node ids are random per run; the ServerApp asks every node who it is and binds the scenario's
sites to the nodes that claim them. In simulation a node answers from the scenario's site
list (its ``partition-id``), in deployment from its SuperNode's ``--node-config``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedll.config.schema import Scenario
from fedll.errors import ConfigError
from fedll.federation.messages import META

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteInfo:
    """What a node said about itself in reply to ``query.meta``."""

    node_id: int
    name: str
    modality: str
    num_cases: int


def discover_sites(grid: Grid, expected: int, timeout: float = 300.0) -> list[SiteInfo]:
    """Wait up to ``timeout`` for ``expected`` nodes, then ask each who it is (``query.meta``).

    A node that cannot answer (a bad ``--node-config``, no data) is logged with its id and
    the reason and left out; so are sites that did not connect in time, if any node did.
    """
    deadline = time.monotonic() + timeout
    while len(node_ids := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            if not node_ids:
                raise ConfigError(f"no site connected within {timeout:.0f}s")
            logger.error(
                "only %d of %d sites connected within %.0fs; going on with them",
                len(node_ids),
                expected,
                timeout,
            )
            break
        time.sleep(0.5)
    messages = [
        Message(RecordDict({META: ConfigRecord()}), message_type="query.meta", dst_node_id=n)
        for n in node_ids
    ]
    infos = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            logger.error("node %d could not describe itself: %s", node, reply.error.reason)
            continue
        meta = reply.content[META]
        infos.append(
            SiteInfo(node, str(meta["site"]), str(meta["modality"]), int(meta["num-cases"]))
        )
    return sorted(infos, key=lambda s: s.name)


def match_sites(scenario: Scenario, infos: Sequence[SiteInfo]) -> dict[str, SiteInfo]:
    """The scenario's sites, each bound to the node that claims it.

    A site that did not join, holds another modality than the scenario says, or holds fewer
    cases than the scenario's ``patients`` is logged (naming the site and the node) and
    left out of the stream; the run goes on with the others.
    """
    names = {s.name for s in scenario.sites}
    for info in infos:
        if info.name not in names:
            logger.error(
                "node %d says it is site %s, which the scenario does not name; ignored",
                info.node_id,
                info.name,
            )
    by_name = {i.name: i for i in infos}
    bound: dict[str, SiteInfo] = {}
    for index, site in enumerate(scenario.sites):
        info = by_name.get(site.name)
        if info is None:
            problem = "did not join"
        elif info.modality != site.modality:
            problem = f"holds {info.modality}, the scenario says {site.modality}"
        elif info.num_cases < site.patients:
            problem = f"holds {info.num_cases} cases, the scenario asks {site.patients}"
        else:
            bound[site.name] = info
            continue
        node = "" if info is None else f" (node {info.node_id})"
        logger.error(
            "site %s (sites.%d)%s %s; it is left out of the stream",
            site.name,
            index,
            node,
            problem,
        )
    if not bound:
        raise ConfigError("none of the scenario's sites joined the federation")
    return bound
