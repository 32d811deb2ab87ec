"""The annealed softmax temperature of a router (Chen et al. 2020 anneal 30 -> 1).

The temperature anneals linearly from ``temperature_start`` to ``temperature_end`` over
``anneal_steps`` optimiser steps and then stays fixed. The step count is a buffer
(``anneal_step``), so the schedule is saved and resumed with the state dict; it is advanced
explicitly, once per optimiser step, by :func:`fedll.models.inspection.advance_schedule`.
"""

from __future__ import annotations

import torch

from fedll.models.routing import RoutingSpec


def temperature_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Softmax temperature after ``step`` optimiser steps: linear from ``start`` to ``end``.

    Reaches ``end`` at ``step == anneal_steps`` and stays there; ``anneal_steps == 0`` means
    ``end`` from the first step (Chen et al. anneal 30 -> 1 over the first epochs).
    """
    if anneal_steps <= 0 or step >= anneal_steps:
        return float(end)
    return float(start + (end - start) * (max(step, 0) / anneal_steps))


def temperature_tensor(
    step: torch.Tensor, start: float, end: float, anneal_steps: int
) -> torch.Tensor:
    """:func:`temperature_at` on a 0-d floating ``step`` tensor, so no value leaves the device."""
    if anneal_steps <= 0:
        return torch.full_like(step, end)
    return start + (end - start) * (step / anneal_steps).clamp(0.0, 1.0)


class TemperatureSchedule:
    """The annealed softmax temperature of a router: the schedule of its ``spec``
    (``temperature_start``, ``temperature_end``, ``anneal_steps``) at the ``anneal_step``
    buffer of the module it is mixed into (see :func:`temperature_at`)."""

    spec: RoutingSpec
    anneal_step: torch.Tensor

    @property
    def temperature(self) -> float:
        """The current softmax temperature tau."""
        spec = self.spec
        return temperature_at(
            int(self.anneal_step), spec.temperature_start, spec.temperature_end, spec.anneal_steps
        )

    def _temperature_for(self, like: torch.Tensor) -> float | torch.Tensor:
        """:attr:`temperature`: a float on CPU, else a 0-d tensor (no host sync per layer)."""
        if self.anneal_step.device.type == "cpu":
            return self.temperature
        spec = self.spec
        return temperature_tensor(
            self.anneal_step.to(like.dtype),
            spec.temperature_start,
            spec.temperature_end,
            spec.anneal_steps,
        )

    def advance(self, steps: int = 1) -> None:
        """Advance the annealing schedule by ``steps`` optimiser steps."""
        self.anneal_step.add_(steps)
