from __future__ import annotations

import math

import pytest
import torch

from fedll.models.attention import AttentionCoefficients, pooled_statistics, straight_through_top_k
from fedll.models.routing import RoutingLossWeights, RoutingSpec, routing_regulariser
from fedll.models.temperature import temperature_at, temperature_tensor


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def test_temperature_schedule_is_linear_then_fixed() -> None:
    assert temperature_at(0, 30.0, 1.0, 100) == 30.0
    assert temperature_at(50, 30.0, 1.0, 100) == pytest.approx(15.5)
    assert temperature_at(100, 30.0, 1.0, 100) == 1.0
    assert temperature_at(10_000, 30.0, 1.0, 100) == 1.0
    assert temperature_at(0, 30.0, 0.5, 0) == 0.5


def test_annealing_reaches_temperature_end_after_anneal_steps() -> None:
    acp = AttentionCoefficients(
        4, 4, spec=RoutingSpec(temperature_start=30.0, temperature_end=0.25, anneal_steps=5)
    )
    seen = [acp.temperature]
    for _ in range(7):
        acp.advance()
        seen.append(acp.temperature)
    assert seen[0] == 30.0
    assert all(a > b for a, b in zip(seen[:5], seen[1:6], strict=True))
    assert seen[5:] == [0.25, 0.25, 0.25]
    assert int(acp.anneal_step) == 7


def test_pooled_statistics_values() -> None:
    x = torch.arange(10.0).view(1, 1, 2, 5)  # one channel holding 0..9
    stats = pooled_statistics(x, ("mean", "std", "max", "quantiles"), (0.0, 0.5, 0.9))
    expected_std = math.sqrt(8.25 + 1e-5)  # population variance of 0..9 is 8.25
    assert stats.shape == (1, 6)
    torch.testing.assert_close(stats[0], torch.tensor([4.5, expected_std, 9.0, 0.0, 4.5, 8.1]))
    y = torch.randn(3, 4, 7, 9, generator=torch.Generator().manual_seed(0))
    q = torch.tensor([0.1, 0.5, 0.9])
    ours = pooled_statistics(y, ("quantiles",)).view(3, 4, 3)
    torch.testing.assert_close(ours, torch.quantile(y.flatten(2), q, dim=-1).permute(1, 2, 0))


def test_unknown_statistic_and_bad_arguments_raise_value_errors_naming_them() -> None:
    # layers know nothing of config files: a plain ValueError that starts with the argument
    with pytest.raises(ValueError, match="^acp_stats: "):
        RoutingSpec(acp_stats=("mean", "median"))
    with pytest.raises(ValueError, match="^top_k: "):
        AttentionCoefficients(4, 4, spec=RoutingSpec(top_k=5))
    with pytest.raises(ValueError, match="^temperature_start/end: "):
        RoutingSpec(temperature_end=0.0)
    with pytest.raises(ValueError, match="^mode: "):
        AttentionCoefficients(4, 4, mode="mixture")


@pytest.mark.parametrize("mode", ["bank", "grouped"])
def test_attention_sums_to_one_and_depends_on_the_input(mode: str) -> None:
    torch.manual_seed(0)
    acp = AttentionCoefficients(
        6, 3, out_channels=5, mode=mode, spec=RoutingSpec(temperature_start=1.0)
    )
    x = torch.randn(4, 6, 8, 8)
    routing = acp(x)
    expected_shape = (4, 3) if mode == "bank" else (4, 5, 3)
    assert routing.weights.shape == expected_shape
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(expected_shape[:-1]))
    assert (routing.weights[0] - routing.weights[1]).abs().max() > 1e-4


def test_higher_temperature_is_closer_to_uniform() -> None:
    torch.manual_seed(0)
    acp = AttentionCoefficients(
        8, 4, spec=RoutingSpec(temperature_start=30.0, temperature_end=1.0, anneal_steps=1)
    )
    with torch.no_grad():
        acp.fc2.weight.mul_(20.0)  # logits far from zero
    x = torch.randn(16, 8, 6, 6)
    hot = acp(x).weights
    acp.advance()
    cold = acp(x).weights
    assert entropy(hot).min() > entropy(cold).max()
    assert (hot - 0.25).abs().max() < (cold - 0.25).abs().max()


def test_std_statistic_separates_inputs_with_equal_mean() -> None:
    flat = torch.full((1, 3, 6, 6), 0.5)
    checker = (torch.arange(36).view(6, 6) % 2 * 2 - 1).float()  # +-1, mean 0
    spread = flat + checker
    torch.testing.assert_close(flat.mean((2, 3)), spread.mean((2, 3)))
    for stats, differs in ((("mean",), False), (("mean", "std"), True)):
        torch.manual_seed(0)
        acp = AttentionCoefficients(3, 4, spec=RoutingSpec(acp_stats=stats, temperature_start=1.0))
        a, b = acp(torch.cat([flat, spread])).weights
        assert bool((a - b).abs().max() > 1e-4) is differs, stats


def test_straight_through_top_k_values_and_gradient() -> None:
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1]], requires_grad=True)
    hard = straight_through_top_k(probs, 2)
    torch.testing.assert_close(hard.detach(), torch.tensor([[0.0, 0.625, 0.375, 0.0]]))
    assert hard[0, 0].item() == 0.0 and hard[0, 3].item() == 0.0
    (hard * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    torch.testing.assert_close(probs.grad, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # identity


def test_routing_regulariser_by_hand() -> None:
    k = 4
    uniform = torch.full((3, k), 0.25)
    one_hot_same = torch.eye(k)[[1, 1, 1]]
    both = RoutingLossWeights(confidence=1.0, balance=1.0)
    conf = RoutingLossWeights(confidence=1.0)
    bal = RoutingLossWeights(balance=1.0)
    # uniform: entropy log K per sample, batch mean uniform -> KL 0
    assert routing_regulariser(uniform, conf).item() == pytest.approx(math.log(k))
    assert routing_regulariser(uniform, bal).item() == pytest.approx(0.0, abs=1e-6)
    # every sample on one kernel: confident (entropy 0), unbalanced (KL = log K)
    assert routing_regulariser(one_hot_same, conf).item() == pytest.approx(0.0, abs=1e-6)
    assert routing_regulariser(one_hot_same, both).item() == pytest.approx(math.log(k), abs=1e-5)
    # each sample on its own kernel: confident and balanced
    assert routing_regulariser(torch.eye(k), both).item() == pytest.approx(0.0, abs=1e-5)
    # grouped shape (B, C_out, G): averaged over output channels
    grouped = uniform[:, None, :].expand(3, 5, k)
    assert routing_regulariser(grouped, conf).item() == pytest.approx(math.log(k))


def test_device_side_temperature_equals_the_float_schedule() -> None:
    for step in (0, 3, 10, 25):
        got = temperature_tensor(torch.tensor(float(step)), 30.0, 0.5, 10)
        assert got.item() == pytest.approx(temperature_at(step, 30.0, 0.5, 10))
    assert temperature_tensor(torch.tensor(4.0), 30.0, 0.5, 0).item() == 0.5
