"""The one Flower ClientApp: every hospital is data, not code.

:func:`make_client_app` builds it; ``app`` (what ``flwr run`` and SuperNodes load) reads each
site from its node config, a sweep's trial passes its in-memory cohort and device instead.

Messages it answers:
- ``query.meta``: the site's name, modality and number of training cases (no case ids);
- ``train``: load the global model, train on the cases the server says arrived (plus what
  the CL method adds, e.g. replayed earlier cases), reply with the new weights, the number of
  training slices and the attention mass per kernel, and what the strategy's site part adds
  (:func:`strategies.registry.site_parts`): with SCAFFOLD (the message carries the server's
  control variate) the gradients are corrected and the reply carries the change of the site's
  control variate (:mod:`strategies.scaffold`); with Ditto the site also trains its
  personalised model and sends it back (:mod:`strategies.ditto`).

(The global model is evaluated by the ServerApp on the held-out test sets, so sites are never
asked to evaluate.) Images and masks never leave the site: only parameters and aggregate
metrics do. What a site keeps between its rounds lives in ``context.state``: the optimiser's
moments (when the scenario keeps them), the CL method's state (``continual``: an EWC Fisher, a
replay buffer of case indices), with a FedBN-style strategy its own normalisation layers
(``local-norm``), overlaid on every model it receives, and what a strategy's site part keeps
(SCAFFOLD's control variate, Ditto's personalised model). A real SuperNode
holds the context in memory, so a site read from its node config (or the run directory)
also keeps that state on its own disk after every round it trains and reloads it when its
context state is empty: its SuperNode restarted, or the trial resumed under a new Flower run
(:mod:`fedll.federation.site_state`). A fault the
scenario injects (:mod:`fedll.federation.faults`) is applied here: the site raises, or sends a
corrupted update (a Byzantine one is taken against the global model as received, before the FedBN
overlay).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedll.config.instruction import TrainInstruction
from fedll.data.arrays import CohortArrays, SiteArrays
from fedll.data.site import Site, resolve_site
from fedll.federation.faults import InjectedFault, corrupt, raises
from fedll.federation.messages import (
    ATTENTION,
    CONFIG,
    CONTINUAL_STATE,
    LOCAL_NORM_STATE,
    META,
    METRICS,
    MODEL,
    OPTIMIZER_STATE,
    WEIGHT,
)
from fedll.federation.site_state import SiteStateStore, site_state_dir
from fedll.models import build_model, freeze_routing, parameter_groups
from fedll.run.device import resolve_device
from fedll.training.continual import ProximalTerm, build_method
from fedll.training.train import TrainingHook, TrainResult, slice_modalities, train_local
from strategies.privacy import clipping_mod
from strategies.registry import site_parts

logger = logging.getLogger(__name__)


def make_client_app(cohort: CohortArrays | None = None, device: str | None = None) -> ClientApp:
    """The ClientApp; a sweep's trial passes its in-memory ``cohort`` (the simulated sites)
    and the trial's ``device``. Without them a simulated site is read from the run directory,
    and a deployed one from its node config (``data-dir``, and ``device``: auto by default)."""
    app = ClientApp(mods=[clipping_mod])  # clips where a trial's DP asks for it, at the site

    def site_of(context: Context) -> Site | SiteArrays:
        return resolve_site(context.node_config, context.run_config, cohort)

    @app.query("meta")
    def meta(msg: Message, context: Context) -> Message:
        """Who this node is: site, modality and how many training cases it holds."""
        site = site_of(context)
        record = ConfigRecord(
            {"site": site.name, "modality": site.modality, "num-cases": len(site)}
        )
        return Message(RecordDict({META: record}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Train the received model on this round's arrivals (or all arrived cases)."""
        where = site_device(context.node_config, context.run_config, device)
        return train_site(msg, context, site_of(context), where)

    return app


def site_device(
    node_config: Mapping[str, Any], run_config: Mapping[str, Any], device: str | None = None
) -> torch.device:
    """Where a site trains: the sweep's ``device`` when it gives one, else the node config's
    ``device`` (a deployed site chooses its own), else the run config's, else ``auto``."""
    if device is not None:
        return resolve_device(device)
    if "device" in node_config:
        return resolve_device(str(node_config["device"]), key="--node-config device")
    return resolve_device(str(run_config.get("device", "auto")), key="run config device")


def train_site(
    msg: Message, context: Context, site: Site | SiteArrays, device: torch.device
) -> Message:
    """Train the received model on ``device`` on the cases the server says arrived."""
    instruction = TrainInstruction.from_config(dict(msg.content[CONFIG]))
    store = _store(context, site)
    if store is not None and instruction.state_key is not None and not context.state:
        _reload(store, instruction, context)
    if raises(instruction.fault, instruction.server_round, instruction.seed):
        raise InjectedFault(f"site {site.name}: injected failure, round {instruction.server_round}")
    torch.set_num_threads(max(1, instruction.threads))
    method = build_method(
        instruction.continual,
        _numpy(context.state.get(CONTINUAL_STATE, ArrayRecord())),
        instruction.seed,
        instruction.server_round,
    )
    cases = site.cases(instruction.slices, method.select_cases(instruction.case_range()))
    as_sent = _received_state(instruction, msg.content[MODEL])  # a Byzantine delta's base
    model = _received_model(instruction, msg.content[MODEL], context).to(device)
    parts = site_parts(msg.content, context.state, instruction)
    for part in parts:
        part.received(model)
    hooks: list[TrainingHook] = [method]
    if instruction.proximal_mu > 0:
        hooks.append(ProximalTerm(instruction.proximal_mu))
    hooks.extend(hook for part in parts for hook in part.hooks())
    images = np.concatenate([c.images for c in cases])
    masks = np.concatenate([c.masks for c in cases])
    modalities = slice_modalities(model, [site.modality] * len(images))
    if frozen := freeze_routing(model, instruction.server_round):
        logger.info("site %s: routing frozen (%d parameters)", site.name, len(frozen))
    torch.manual_seed(instruction.seed)
    result = train_local(
        model,
        images,
        masks,
        instruction.training,
        instruction.seed,
        _unpack_optimizer(context.state[OPTIMIZER_STATE])
        if instruction.training.optimizer_state == "keep" and OPTIMIZER_STATE in context.state
        else None,
        hooks,
        modalities,
    )
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    _keep_site_state(context, instruction, result, method.state(), model, state)
    logger.info("site %s trained on %d slices, loss %.4f", site.name, result.samples, result.loss)
    extra: dict[str, ArrayRecord] = {}
    for part in parts:
        reply, kept = part.finish(instruction, images, masks, modalities, device)
        context.state.update({name: _record(arrays) for name, arrays in kept.items()})
        extra.update({name: _record(arrays) for name, arrays in reply.items()})
    if store is not None and instruction.state_key is not None:
        # before the reply: a site whose update the server has holds the state it came from
        store.save(instruction.state_key, instruction.server_round, context.state)
    return _reply(msg, instruction, result, len(cases), state, as_sent, extra)


def _store(context: Context, site: Site | SiteArrays) -> SiteStateStore | None:
    """Where the site keeps its state on disk: a site of a sweep (in memory) keeps none."""
    if not isinstance(site, Site):
        return None
    directory = site_state_dir(context.node_config, context.run_config, site.name)
    return None if directory is None else SiteStateStore(directory, site.name)


def _reload(store: SiteStateStore, instruction: TrainInstruction, context: Context) -> None:
    """Put back the state the site kept before this round, when it has one for this run."""
    assert instruction.state_key is not None
    found = store.load(instruction.state_key, instruction.server_round)
    if found is None:
        return
    kept_round, state = found
    if not state:  # the site keeps nothing between rounds (no CL state, a fresh optimiser)
        return
    for name, record in state.items():
        context.state[name] = record
    logger.warning(
        "site %s: state of round %d reloaded from %s (round %d)",
        store.site, kept_round, store.path(instruction.state_key), instruction.server_round,
    )  # fmt: skip


app = make_client_app()


def _received_state(instruction: TrainInstruction, arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """The global model as the server sent it (before any FedBN overlay): what a corrupted
    update's delta is taken against. Empty when the site sends its update as trained."""
    if instruction.fault is None or instruction.fault.send is None:
        return {}
    return {k: v.numpy() for k, v in arrays.items()}


def _received_model(
    instruction: TrainInstruction, arrays: ArrayRecord, context: Context
) -> torch.nn.Module:
    """The global model, with the site's own normalisation layers overlaid (FedBN)."""
    spec = instruction.model
    model = build_model(spec.name, **spec.kwargs())
    model.load_state_dict(arrays.to_torch_state_dict())
    if instruction.local_norm and LOCAL_NORM_STATE in context.state:
        model.load_state_dict(context.state[LOCAL_NORM_STATE].to_torch_state_dict(), strict=False)
    return model


def _keep_site_state(
    context: Context,
    instruction: TrainInstruction,
    result: TrainResult,
    continual: dict[str, np.ndarray],
    model: torch.nn.Module,
    state: dict[str, np.ndarray],
) -> None:
    """What the site keeps for its next round: optimiser moments, CL state, local norms."""
    if result.optimizer_state is not None:
        context.state[OPTIMIZER_STATE] = _pack_optimizer(result.optimizer_state)
    if continual:
        context.state[CONTINUAL_STATE] = ArrayRecord({k: Array(v) for k, v in continual.items()})
    if instruction.local_norm:
        norm_keys = [k for k, g in parameter_groups(model).items() if g == "norm"]
        context.state[LOCAL_NORM_STATE] = ArrayRecord({k: Array(state[k]) for k in norm_keys})


def _reply(
    msg: Message,
    instruction: TrainInstruction,
    result: TrainResult,
    cases: int,
    state: dict[str, np.ndarray],
    received: dict[str, np.ndarray],
    extra: Mapping[str, ArrayRecord],
) -> Message:
    """The reply: the weights (corrupted if the scenario injects that, against the
    ``received`` global model), the training metrics, the attention mass per kernel of each
    dynamic layer and the ``extra`` ArrayRecords the strategy asked for (SCAFFOLD's
    control-variate change, Ditto's personalised model)."""
    metrics = MetricRecord(
        {
            WEIGHT: result.samples,
            "train-loss": result.loss,
            "steps": result.steps,
            "cases": cases,
        }
    )
    attention = ConfigRecord(
        {f"mass/{layer}": mass.ravel().tolist() for layer, mass in result.attention_mass.items()}
    )
    send = instruction.fault.send if instruction.fault is not None else None
    sent = corrupt(state, send, received=received, seed=instruction.seed) if send else state
    content = RecordDict({MODEL: _record(sent), **extra, METRICS: metrics, ATTENTION: attention})
    return Message(content, reply_to=msg)


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def _pack_optimizer(state: dict[int, dict[str, torch.Tensor]]) -> ArrayRecord:
    """Per-parameter optimiser moments as one ArrayRecord (kept in the site's context)."""
    return ArrayRecord(
        {
            # np.array, not np.ascontiguousarray: that turns Adam's 0-d step into shape (1,)
            f"{index}/{name}": Array(np.array(torch.as_tensor(value).cpu().numpy(), order="C"))
            for index, slot in state.items()
            for name, value in slot.items()
        }
    )


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _unpack_optimizer(record: ArrayRecord) -> dict[int, dict[str, torch.Tensor]]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, array in record.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = torch.from_numpy(array.numpy().copy())
    return state
