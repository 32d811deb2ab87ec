"""Ditto (Li et al., ICML 2021): fair and robust federated learning through personalisation,
both sides.

**The server** (:class:`Ditto`) trains and aggregates the global model as FedAvg (fedll's
float64 mean) and tells each round's sites to train their personalised model too
(:data:`PERSONALISE` and :data:`LAMBDA` in the config). A site replies with its personalised
model in the :data:`~fedll.federation.messages.PERSONAL` ArrayRecord, which the rule checks (a
reply without a usable one is rejected) and never aggregates: the ServerApp evaluates it on the
site's modality test set (:mod:`strategies.federation`).

**The site** (:class:`DittoSite`, built by :func:`ditto_site` from a train message that asks
for it) keeps a personalised model ``v`` (in its context state, :data:`SITE_PERSONAL`,
initialised from the first global model it receives). In every round it trains, the site
trains the global model as FedAvg asks, and ``v`` on the same slices with the loss plus
``lam / 2 ||v - w||^2``, ``w`` the global model it received (Algorithm 1, the personalised
step, as a proximal term over the trainable parameters:
:class:`fedll.training.continual.ProximalTerm` with ``w`` as its anchor; :func:`train_personal`,
plain torch). ``v`` trains with a fresh optimiser each round (the kept moments, where the
scenario keeps them, are the global model's) and without the CL method's terms: the CL
method's state follows the global model. ``v`` is sent back for evaluation only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fedll.config.instruction import TrainInstruction
from fedll.config.schema import TrainingConfig
from fedll.errors import ConfigError
from fedll.federation.messages import CONFIG, PERSONAL
from fedll.models import build_model, freeze_routing
from fedll.training.continual import ProximalTerm
from fedll.training.train import Arrays, SitePart, TrainResult, train_local
from strategies.aggregation import State, update_problem
from strategies.fedavg import PreciseFedAvg

PERSONALISE = "ditto"
"""The config key that asks a site to train its personalised model this round (True)."""
LAMBDA = "ditto-lambda"
"""The config key of the proximal weight ``lambda``."""
SITE_PERSONAL = "ditto-personal"
"""A site's personalised model in its kept context state (a name of fedll's site-state and
checkpoint formats: renaming it breaks resuming from kept state)."""


class Ditto(PreciseFedAvg):
    """FedAvg of the global models; each site's personalised model comes back beside it.

    ``lam``: the proximal weight ``lambda`` of the personalised objective
    ``F_k(v) + lambda / 2 ||v - w||^2``.
    """

    reply_arrays = (PERSONAL,)

    def __init__(self, groups: Mapping[str, str], lam: float = 0.1, **kwargs: Any) -> None:
        super().__init__(groups=groups, **kwargs)
        self.lam = float(lam)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[PERSONALISE] = True
        config[LAMBDA] = self.lam
        return super().configure_train(server_round, arrays, config, grid)

    def problem(self, reply: Message, state: State, samples: float) -> str | None:
        """An update must carry its personalised model, shaped and typed as the global one
        and finite."""
        if PERSONAL not in reply.content.array_records:
            return f"no {PERSONAL!r} ArrayRecord"
        personal = {k: v.numpy() for k, v in reply.content.array_records[PERSONAL].items()}
        problem = update_problem(state, personal)
        return None if problem is None else f"{PERSONAL}: {problem}"


def train_personal(
    personal: nn.Module,
    received: Mapping[str, torch.Tensor],
    images: np.ndarray,
    masks: np.ndarray,
    cfg: TrainingConfig,
    seed: int,
    lam: float,
    modalities: np.ndarray | None = None,
) -> TrainResult:
    """Train the personalised model ``personal`` in place on ``images`` / ``masks``
    (N, 1, H, W), its loss plus ``lam / 2 * sum ||v - received||^2`` over the parameters that
    ``received`` (the global model the site received, by parameter name) holds; mini-batches
    in the order of ``seed``, a fresh optimiser; ``modalities`` as for
    :func:`~fedll.training.train.train_local`."""
    anchor = {name: tensor.detach().clone() for name, tensor in received.items()}
    cfg = cfg.model_copy(update={"optimizer_state": "reset"})
    hooks = [ProximalTerm(lam, anchor)]
    return train_local(personal, images, masks, cfg, seed, None, hooks, modalities)


class DittoSite(SitePart):
    """Ditto's site part: ``lam``, the proximal weight; ``kept``, the site's personalised
    model from its state (None before its first round: the received model)."""

    def __init__(self, lam: float, kept: ArrayRecord | None = None) -> None:
        self.lam = lam
        self.kept = kept
        self.global_model: dict[str, torch.Tensor] = {}

    def received(self, model: nn.Module) -> None:
        # the personalised model is pulled toward the model as received
        self.global_model = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def finish(
        self,
        instruction: TrainInstruction,
        images: np.ndarray,
        masks: np.ndarray,
        modalities: np.ndarray | None,
        device: torch.device,
    ) -> tuple[dict[str, Arrays], dict[str, Arrays]]:
        """The personalised step (:func:`train_personal`) on the slices the global model
        trained on; the personalised model for the reply and the site's state."""
        spec = instruction.model
        personal = build_model(spec.name, **spec.kwargs())
        if self.kept is not None:
            personal.load_state_dict(self.kept.to_torch_state_dict())
        else:
            personal.load_state_dict(self.global_model)
        personal.to(device)
        freeze_routing(personal, instruction.server_round)
        parameters = {n for n, _ in personal.named_parameters()}
        torch.manual_seed(instruction.seed)
        train_personal(
            personal,
            {n: t for n, t in self.global_model.items() if n in parameters},
            images,
            masks,
            instruction.training,
            instruction.seed,
            self.lam,
            modalities,
        )
        arrays = {k: v.detach().cpu().numpy() for k, v in personal.state_dict().items()}
        return {PERSONAL: arrays}, {SITE_PERSONAL: arrays}


def ditto_site(
    content: RecordDict, state: RecordDict, instruction: TrainInstruction
) -> DittoSite | None:
    """The site part of a train message whose config asks for the personalised step (None
    otherwise), with the site's personalised model from its kept ``state``. ConfigError
    (one line) if the config's ``lambda`` is not a number >= 0."""
    config = content.config_records.get(CONFIG, ConfigRecord())
    if not config.get(PERSONALISE, False):
        return None
    lam = config.get(LAMBDA, 0.0)
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not lam >= 0:
        raise ConfigError(f"train instruction from the server: {LAMBDA}: {lam!r} is not >= 0")
    return DittoSite(float(lam), state.get(SITE_PERSONAL))
