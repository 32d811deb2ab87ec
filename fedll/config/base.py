"""The base of every scenario type: frozen, no unknown key, no infinity or NaN, and no boolean
read as a number.

Pydantic's lax mode reads ``true`` as 1 wherever an ``int`` or a ``float`` is meant (``seeds:
true`` would be seed 1, ``epochs: yes`` one epoch: YAML reads ``yes`` and ``on`` as booleans);
:class:`Frozen` refuses a boolean in any place that its field's annotation reads as a number,
so every number of every section is covered, also those added later. :data:`Seed` and
:data:`SimpleName` are the scalar types several sections share.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from fedll.names import check_simple_name

SimpleName = Annotated[str, AfterValidator(lambda name: check_simple_name(name, "name"))]
Seed = Annotated[int, Field(ge=0, lt=2**32, description="a seed: 0 <= seed < 2**32")]


class Frozen(BaseModel):
    """A frozen scenario type that refuses unknown keys, infinities, NaN and booleans where
    its fields read a number."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            if name not in data:
                continue
            path = boolean_number(field.annotation, data[name])
            if path is not None:
                value = str(_at(data[name], path)).lower()
                detail = PydanticCustomError(
                    "boolean_number",
                    "expected a number, got the boolean {value} (YAML reads true, false, yes, "
                    "no, on and off as booleans)",
                    {"value": value},
                )
                raise ValidationError.from_exception_data(
                    cls.__name__, [InitErrorDetails(type=detail, loc=(name, *path), input=value)]
                )
        return data


def boolean_number(annotation: Any, value: Any) -> tuple[int | str, ...] | None:
    """Where in ``value`` a boolean stands that ``annotation`` would read as a number (the
    path of list indexes and mapping keys), None when there is none. A scalar given for a list
    is read as its one item (``seeds: 3`` is ``[3]``); nested scenario types check themselves."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return boolean_number(args[0], value)
    if _reads_number(annotation):
        return () if isinstance(value, bool) else None
    if origin in (Union, types.UnionType):
        if any(arm is bool or arm is Any for arm in args):
            return None
        paths = [boolean_number(arm, value) for arm in args]
        return next((p for p in paths if p is not None), None)
    if origin in (list, tuple) and args:
        if not isinstance(value, list | tuple):
            return boolean_number(args[0], value)
        fixed = origin is tuple and Ellipsis not in args
        for index, item in enumerate(value):
            item_type = args[index] if fixed and index < len(args) else args[0]
            if (path := boolean_number(item_type, item)) is not None:
                return (index, *path)
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        for key, item in value.items():
            if (path := boolean_number(args[1], item)) is not None:
                return (key, *path)
    return None


def _reads_number(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    literal = typing.get_origin(annotation) is Literal
    values = typing.get_args(annotation)
    return literal and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _at(value: Any, path: tuple[int | str, ...]) -> Any:
    for part in path:
        value = value[part]
    return value
