"""The scenario reference (docgen.scenario): generated from the schema, it lists every field of
every section with its type, default, bounds and description, and every model builder's
arguments; a field the schema does not describe fails here."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from docgen import scenario as page
from fedll.config.schema import Scenario
from fedll.models import model_names

ROOT = Path(__file__).resolve().parents[2]


def reachable(model: type[BaseModel]) -> set[type[BaseModel]]:
    """Every schema class a scenario file can reach from ``model``, found by walking the
    annotations here (independently of the generator)."""
    seen: set[type[BaseModel]] = set()

    def walk(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.add(annotation)
                for info in annotation.model_fields.values():
                    walk(info.annotation)
            return
        for arg in typing.get_args(annotation):
            walk(arg)

    walk(model)
    return seen


def is_tag(model: type[BaseModel], field: str) -> bool:
    """Whether ``field`` is the ``name`` literal that selects ``model`` in a tagged union (the
    generated page describes it as selecting the option set)."""
    if field != "name":
        return False
    return typing.get_origin(model.model_fields["name"].annotation) is typing.Literal


def test_every_schema_field_has_a_description():
    missing = [
        f"{model.__module__}.{model.__name__}.{name}"
        for model in reachable(Scenario)
        for name, info in model.model_fields.items()
        if not (info.description or "").strip() and not is_tag(model, name)
    ]
    assert missing == []


def test_every_schema_class_and_field_is_on_the_page():
    sections = page.sections()
    documented = {s.model: [r.key.rsplit(".", 1)[-1] for r in s.rows] for s in sections}
    assert set(documented) == reachable(Scenario)
    for model, keys in documented.items():
        assert keys == list(model.model_fields), model.__name__
    text = page.markdown()
    for section in sections:
        assert f"{{#{section.anchor}}}" in text
        for row in section.rows:
            assert f"| `{row.key}` |" in text
            assert row.description, row.key  # tags get a generated one


def test_rows_carry_type_default_bounds_and_description():
    rows = {r.key: r for r in page.schema_rows()}
    lr = rows["training.lr"]
    assert (lr.type, lr.default, lr.bounds) == ("float", "`0.001`", "> 0")
    assert lr.description == "the sites' learning rate"
    batch = rows["stream.arrival_batch"]
    assert (batch.type, batch.default) == ("list of int", "`[5]`")
    assert batch.bounds == "at least 1 item, each ≥ 1"
    assert rows["slices.axis"].type == "`0` \\| `1` \\| `2`"
    assert rows["cohort"].default == "required"
    assert rows["seeds"].bounds == "at least 1 item, each ≥ 0, each < 4294967296"
    quantile = rows["strategies[].dp.target_quantile"]
    assert (quantile.type, quantile.default, quantile.bounds) == (
        "float \\| null",
        "`null`",
        "> 0, < 1",
    )


def test_each_strategy_and_cl_method_has_its_own_section():
    from fedll.config.options import ContinualOptions, option_names
    from fedll.config.strategies import StrategyOptions

    titles = {s.title for s in page.sections()}
    for name in option_names(StrategyOptions):
        assert f"`strategies[]` with `name: {name}`" in titles
    for name in option_names(ContinualOptions):
        assert f"`cl[]` with `name: {name}`" in titles
    fedprox = next(s for s in page.sections() if s.title == "`strategies[]` with `name: fedprox`")
    mu = next(r for r in fedprox.rows if r.key == "strategies[].mu")
    assert (mu.default, mu.bounds) == ("`0.01`", "≥ 0")


@pytest.mark.parametrize("name", model_names())
def test_every_builder_argument_is_on_the_page(name: str):
    from fedll.models.registry import _builder, _parameters

    section = next(s for s in page.builder_sections() if s.path.endswith(f"@{name}"))
    keys = [r.key.rsplit(".", 1)[-1] for r in section.rows]
    assert keys == list(_parameters(_builder(name)))
    assert f"{{#{section.anchor}}}" in page.markdown()


def test_the_dycnn_arguments_by_hand():
    dycnn = next(s for s in page.builder_sections() if s.path.endswith("@dycnn"))
    rows = {r.key.rsplit(".", 1)[-1]: r for r in dycnn.rows}
    assert "mode" not in rows  # fixed by the registration
    assert (rows["num_kernels"].default, rows["num_kernels"].bounds) == ("`4`", "≥ 1")
    assert rows["quantiles"].type == "list of float"
    assert rows["quantiles"].bounds == "each ≥ 0, each ≤ 1"
    assert (rows["top_k"].type, rows["top_k"].bounds) == ("int \\| null", "≥ 1")


def test_the_reference_page_holds_the_generated_part():
    assert (
        "<!-- fedll-docs: scenario-reference -->"
        in (ROOT / "docs" / "reference" / "scenario.md").read_text()
    )
