"""Flower's strategies as scenario options: each option class is a named attribute of its
module (as a class statement makes it, and as pickling a trial for a Ray task needs)."""

from __future__ import annotations

import pickle

from fedll.config import flower
from fedll.config.options import name_of, option_names
from fedll.config.strategies import StrategyOptions


def test_every_flower_option_class_is_its_module_attribute_and_pickles():
    for options in flower.FLOWER_OPTIONS:
        assert options.__module__ == "fedll.config.flower"
        assert getattr(flower, options.__name__) is options
        assert options.__name__ == f"{options.flower.cls}Options"
        instance = options(name=name_of(options))
        assert pickle.loads(pickle.dumps(instance)) == instance


def test_the_rules_follow_the_option_classes_into_the_union():
    assert [rule.name for rule in flower.FLOWER_RULES] == [
        name_of(o) for o in flower.FLOWER_OPTIONS
    ]
    names = option_names(StrategyOptions)
    assert names[: names.index("fedprox")] == (
        "fedavg",
        "fedbn",
        "dynamic-aware",
        "scaffold",
        "ditto",
    )
    assert names[names.index("fedprox") :] == tuple(r.name for r in flower.FLOWER_RULES)
