"""An estimate of each trial's work, so that a sweep can start the longest trials first.

With more trials than workers, the sweep ends when its last trial does; started last, a long
trial runs alone at the end while the other workers idle. :func:`trial_work` counts what
dominates a trial (:mod:`fedll.evaluation.evaluate` and :mod:`fedll.training.train`, see
docs/benchmarks.md): slices through the model, training passes counted as three forward passes
(forward and backward), every test slice once per evaluation (after every round and before the
first), each weighted by the multiply-adds of the model's convolutions per slice. Only the order of
the estimates matters: nothing else reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from fedll.config import Scenario, Trial
from fedll.config.schema import ModelConfig
from fedll.data.arrays import CohortArrays
from fedll.federation.stream import Round
from fedll.models import build_model
from fedll.models.dynamic_conv import DynamicConv2d
from fedll.models.inspection import routes_by_modality
from fedll.run.planning import trial_stream

TRAIN_PASSES = 3.0
"""A training step's slice costs about three forward passes (forward, then backward)."""
DYNAMIC_COST = 1.25
"""A dynamic convolution's multiply-add costs about 1.25 static ones (kernel mixing, the ACP,
the bank's optimiser step; benchmarks/bench_models.py measures 1.1-1.4x per train step)."""


def forward_flops(spec: ModelConfig, size: int) -> float:
    """Multiply-adds of the convolutions of the model ``spec`` builds, on one (1, 1, size,
    size) slice (a dynamic one's weighted by :data:`DYNAMIC_COST`), counted by hooks on one
    forward on the meta device (shapes only: no kernel runs, none is compiled)."""
    model = build_model(spec.name, **spec.kwargs()).eval().to("meta")
    total = 0.0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        groups = getattr(module, "groups", 1)
        macs = out.numel() * module.in_channels // groups * kh * kw
        total += macs * (DYNAMIC_COST if isinstance(module, DynamicConv2d) else 1.0)

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | DynamicConv2d)
    ]
    x = torch.zeros(1, 1, size, size, device="meta")
    with torch.no_grad():
        if routes_by_modality(model):
            model(x, torch.zeros(1, dtype=torch.long, device="meta"))
        else:
            model(x)
    for hook in hooks:
        hook.remove()
    return total


def trial_work(
    scenario: Scenario,
    trial: Trial,
    cohort: CohortArrays,
    flops: Callable[[str], float] | None = None,
) -> float:
    """The estimated work of ``trial`` (FLOPs, roughly): its training and evaluation slices
    weighted by ``flops(model name)`` (default: :func:`forward_flops` at the slices' size)."""
    flops = flops or (lambda name: forward_flops(scenario.models[name], scenario.slices.size))
    test = sum(len(case.images) for cases in cohort.test.values() for case in cases)
    counts = {site.name: [len(case.images) for case in site.slices] for site in cohort.sites}
    epochs = scenario.training.epochs
    if trial.kind == "joint":
        trained = epochs * sum(sum(c) for c in counts.values())
        evaluations = 2
    else:
        rounds = trial_stream(scenario, trial)
        trained = epochs * _trained_slices(rounds, counts, scenario.stream.train_on == "all")
        evaluations = len(rounds) + 1
    return (TRAIN_PASSES * trained + evaluations * test) * flops(trial.model)


def _trained_slices(
    rounds: Sequence[Round], counts: Mapping[str, Sequence[int]], cumulative: bool
) -> int:
    """Slices trained on over the rounds: each round's arrivals, or (``cumulative``) every
    case arrived so far at the sites that have an arrival. ``counts``: each site's slices
    per case, in arrival order (a stream names case ``i`` of site ``s`` ``"s/i"``)."""
    arrived: dict[str, int] = {}
    total = 0
    for rnd in rounds:
        for arrival in rnd.arrivals:
            held = counts.get(arrival.site, ())
            positions = (int(p.rsplit("/", 1)[-1]) for p in arrival.patients)
            new = sum(held[i] for i in positions if i < len(held))
            arrived[arrival.site] = arrived.get(arrival.site, 0) + new
            total += arrived[arrival.site] if cumulative else new
    return total


def longest_first(
    scenario: Scenario,
    trials: Sequence[Trial],
    cohort: CohortArrays,
    flops: Callable[[str], float] | None = None,
) -> list[Trial]:
    """``trials`` by :func:`trial_work`, largest first (ties keep the grid's order); each
    model's :func:`forward_flops` is counted once (or comes from ``flops``)."""
    known: dict[str, float] = {}

    def counted(name: str) -> float:
        if name not in known:
            known[name] = forward_flops(scenario.models[name], scenario.slices.size)
        return known[name]

    work = {t.trial_id: trial_work(scenario, t, cohort, flops or counted) for t in trials}
    return sorted(trials, key=lambda t: -work[t.trial_id])
