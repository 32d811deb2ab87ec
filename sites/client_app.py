"""The one Flower ClientApp: every hospital is data, not code.

Messages it answers:
- ``query.meta``: the site's name, modality and number of training cases (no case ids);
- ``train``: load the global model, train on the cases the server says arrived (plus what
  the CL method adds, e.g. replayed earlier cases), reply with the new weights, the number of
  training slices and the attention mass per kernel;
- ``evaluate``: Dice of the global model on the site's cases that have arrived so far.

Images and masks never leave the site: only parameters and aggregate metrics do. What a
site keeps between its rounds lives in ``context.state``: the optimiser's moments (when the
scenario keeps them), the CL method's state (``continual``: an EWC Fisher, a replay buffer of
case indices) and, with a FedBN-style strategy, its own normalisation layers (``local-norm``),
overlaid on every model it receives. A fault the scenario injects (:mod:`fedll.faults`) is
applied here: the site raises, or sends a corrupted update.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedll.continual import ProximalTerm, build_method
from fedll.data.slices import SliceSpec
from fedll.faults import InjectedFault, corrupt, raises
from fedll.instructions import ModelSpec, SliceRecipe, TrainInstruction
from fedll.models import build_model, parameter_groups
from fedll.train import TrainingHook, evaluate_cases, train_local
from sites.site import resolve_site

logger = logging.getLogger(__name__)

app = ClientApp()


def _spec(recipe: SliceRecipe) -> SliceSpec:
    return SliceSpec(size=recipe.size, empty_fraction=recipe.empty_fraction, seed=recipe.seed)


def _model(spec: ModelSpec, arrays: ArrayRecord) -> torch.nn.Module:
    model = build_model(spec.name, **spec.kwargs)
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def _config(msg: Message) -> dict[str, Any]:
    return dict(msg.content["config"])


@app.query("meta")
def meta(msg: Message, context: Context) -> Message:
    """Who this node is: site, modality and how many training cases it holds."""
    site = resolve_site(context.node_config, context.run_config)
    record = ConfigRecord(
        {"site": site.name, "modality": site.modality, "num-cases": len(site.records)}
    )
    return Message(RecordDict({"meta": record}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this round's arrivals (or all arrived cases)."""
    site = resolve_site(context.node_config, context.run_config)
    instruction = TrainInstruction.from_config(_config(msg))
    fault = instruction.fault
    if raises(fault, instruction.server_round, instruction.seed):
        raise InjectedFault(f"site {site.name}: injected failure, round {instruction.server_round}")
    torch.set_num_threads(max(1, instruction.threads))
    method = build_method(
        instruction.continual,
        _numpy(context.state.get("continual", ArrayRecord())),
        instruction.seed,
        instruction.server_round,
    )
    cases = site.cases(_spec(instruction.slices), method.select_cases(instruction.case_range()))
    images = np.concatenate([c.images for c in cases])
    masks = np.concatenate([c.masks for c in cases])
    model = _model(instruction.model, msg.content["arrays"])
    norm_keys = [k for k, g in parameter_groups(model).items() if g == "norm"]
    if instruction.local_norm and "local-norm" in context.state:
        model.load_state_dict(context.state["local-norm"].to_torch_state_dict(), strict=False)
    optimizer_state = None
    if instruction.training.optimizer_state == "keep" and "optimizer" in context.state:
        optimizer_state = _unpack_optimizer(context.state["optimizer"])
    hooks: list[TrainingHook] = [method]
    if instruction.proximal_mu > 0:
        hooks.append(ProximalTerm(instruction.proximal_mu))
    torch.manual_seed(instruction.seed)
    result = train_local(
        model, images, masks, instruction.training, instruction.seed, optimizer_state, hooks
    )
    if result.optimizer_state is not None:
        context.state["optimizer"] = _pack_optimizer(result.optimizer_state)
    kept = method.state()
    if kept:
        context.state["continual"] = ArrayRecord({k: Array(v) for k, v in kept.items()})
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if instruction.local_norm:
        context.state["local-norm"] = ArrayRecord({k: Array(state[k]) for k in norm_keys})
    logger.info("site %s trained on %d slices, loss %.4f", site.name, result.samples, result.loss)
    metrics = MetricRecord(
        {
            "num-examples": result.samples,
            "train-loss": result.loss,
            "steps": result.steps,
            "cases": len(cases),
        }
    )
    attention = ConfigRecord(
        {f"mass/{layer}": mass.ravel().tolist() for layer, mass in result.attention_mass.items()}
    )
    sent = corrupt(state, fault.send) if fault.send else state
    arrays = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in sent.items()})
    content = RecordDict({"arrays": arrays, "metrics": metrics, "attention": attention})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Dice of the received model on the site's cases up to ``arrival-stop`` (default all)."""
    site = resolve_site(context.node_config, context.run_config)
    config = _config(msg)
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    recipe = SliceRecipe(
        size=int(config["slice-size"]),
        empty_fraction=float(config["empty-fraction"]),
        seed=int(config["slice-seed"]),
    )
    stop = int(config.get("arrival-stop", len(site.records)))
    cases = site.cases(_spec(recipe), range(0, stop))
    model = _model(ModelSpec.from_json(str(config["model"])), msg.content["arrays"])
    scores = evaluate_cases(model, cases).dice
    metrics = MetricRecord(
        {"num-examples": len(scores), "dice": float(np.mean(scores)) if scores else 0.0}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


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
