"""The recipe reference (docs/recipe-reference.md), generated from the schema in lrt/config.py.

Why generated: a hand-written field list drifts from the schema; here every field's type, default and
description (the docstring under the field) come from the pydantic models themselves, and a test keeps
the committed page equal to this output (`lrt recipes reference > docs/recipe-reference.md`).
"""
from __future__ import annotations

import enum
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from lrt.config import Recipe


def _type(ann: Any) -> str:
    """A short readable type: `int | null`, `'cosine' | 'linear'`, `list[str]`, `LoraConfig`."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is type(None):
        return "null"
    if origin is Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type(a) for a in args)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type(a) for a in args)}]"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"[{ann.__name__}](#{ann.__name__.lower()})"
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return " \\| ".join(repr(m.value) for m in ann)
    return getattr(ann, "__name__", str(ann))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            return "<br>".join(str(v.model_dump(exclude_defaults=False)) for v in value)
        return repr(value)
    if field.default is PydanticUndefined:
        return "**required**"
    if isinstance(field.default, BaseModel):
        return "(section defaults)"
    return "null" if field.default is None else repr(field.default)


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every nested section model, depth first, each once."""
    out: list[type[BaseModel]] = [model]
    for f in model.model_fields.values():
        for a in (f.annotation, *typing.get_args(f.annotation), *(x for y in typing.get_args(f.annotation)
                                                                   for x in typing.get_args(y))):
            if isinstance(a, type) and issubclass(a, BaseModel) and a not in out:
                out.extend(m for m in _models(a) if m not in out)
    return out


def undocumented(model: type[BaseModel] = Recipe) -> list[str]:
    """`Section.field` of every field without a description."""
    return [f"{m.__name__}.{name}" for m in _models(model) for name, f in m.model_fields.items()
            if not (f.description or "").strip()]


def reference_markdown() -> str:
    """The whole page, in the schema's order."""
    lines = ["# Recipe reference", "",
             "Generated from the schema (`lrt/config.py`) by `lrt recipes reference`; do not edit by hand",
             "(`tests/test_recipe_reference.py` keeps it equal to the schema). How recipes load, paths and",
             "overrides: [README](../README.md#recipes), [recipes.md](recipes.md). Loss parameters are",
             "checked against each loss's signature: [recipes.md](recipes.md#losses-lrtlosses-selectable-by-name-with-their-parameters).",
             ""]
    for m in _models(Recipe):
        lines += [f"## {m.__name__}", ""]
        doc = (m.__doc__ or "").strip()
        if doc and m.__doc__ is not BaseModel.__doc__:
            lines += [" ".join(doc.split()), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, f in m.model_fields.items():
            desc = " ".join((f.description or "").split()).replace("|", "\\|")
            lines.append(f"| `{name}` | {_type(f.annotation)} | {_default(f).replace('|', chr(92) + '|')} | {desc} |")
        lines.append("")
    return "\n".join(lines)
