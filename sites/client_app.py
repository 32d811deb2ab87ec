"""The one Flower ClientApp: every hospital is data, not code.

Messages it answers:
- ``query.meta``: the site's name, modality and number of training cases (no case ids);
- ``train``: load the global model, train on the cases the server says arrived, reply
  with the new weights, the number of training slices and the attention mass per kernel;
- ``evaluate``: Dice of the global model on the site's cases that have arrived so far.

Images and masks never leave the site: only parameters and aggregate metrics do.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedll.data.slices import SliceSpec
from fedll.instructions import ModelSpec, SliceRecipe, TrainInstruction
from fedll.models import build_model
from fedll.train import evaluate_cases, train_local
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
    torch.set_num_threads(max(1, instruction.threads))
    cases = site.cases(_spec(instruction.slices), instruction.case_range())
    images = np.concatenate([c.images for c in cases])
    masks = np.concatenate([c.masks for c in cases])
    model = _model(instruction.model, msg.content["arrays"])
    state_key = "optimizer"
    optimizer_state = None
    if instruction.training.optimizer_state == "keep" and state_key in context.state:
        optimizer_state = _unpack_optimizer(context.state[state_key])
    torch.manual_seed(instruction.seed)
    result = train_local(
        model, images, masks, instruction.training, instruction.seed, optimizer_state
    )
    if result.optimizer_state is not None:
        context.state[state_key] = _pack_optimizer(result.optimizer_state)
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
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": metrics, "attention": attention}
    )
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
            f"{index}/{name}": Array(np.ascontiguousarray(torch.as_tensor(value).cpu().numpy()))
            for index, slot in state.items()
            for name, value in slot.items()
        }
    )


def _unpack_optimizer(record: ArrayRecord) -> dict[int, dict[str, torch.Tensor]]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, array in record.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = torch.from_numpy(array.numpy().copy())
    return state
