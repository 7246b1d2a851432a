"""The reference of the scorer kinds, generated from their parameter models so that it cannot drift from
the code: `python -m tao_dagster.rewards.reference > docs/scorers.md` (a test checks the file is current)."""

import inspect
import json
import types
import typing

from annotated_types import Ge, Gt
from pydantic import BaseModel

from tao_dagster.rewards.base import Mark
from tao_dagster.rewards.combine import SCORERS

COMMAND = "python -m tao_dagster.rewards.reference > docs/scorers.md"

HEADER = f"""# Scorer kinds

<!-- Generated from the parameter models in tao_dagster/rewards: edit those, then run `{COMMAND}`. -->

Each entry of a domain file's `scorers:` list gives a `kind` (one of those below), a `name` (the kind
when not given) and a `weight` in the weighted mean (1 when not given), and then the kind's parameters.
A parameter a kind does not have, or a value of the wrong type, fails when the domain loads."""


def type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return " or ".join(f"`{v}`" for v in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}"
    return "map" if annotation is dict else annotation.__name__


def nested_models(annotation) -> list[type[BaseModel]]:
    """The parameter models inside a parameter's type (the rule of each json_fields field, say)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in nested_models(a)]


def table(model: type[BaseModel]) -> str:
    rows = ["| parameter | type | default | help |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        kind = type_name(field.annotation)
        kind += "".join(f" > {m.gt}" if isinstance(m, Gt) else f" >= {m.ge}" for m in field.metadata if isinstance(m, Gt | Ge))
        if field.is_required():
            default = "required"
        elif field.default is None:
            default = ""
        else:
            default = f"`{json.dumps(field.default)}`"
        help_ = " ".join([field.description or "", *(m.note for m in field.metadata if isinstance(m, Mark))])
        rows.append(f"| `{field.alias or name}` | {kind} | {default} | {help_} |")
    return "\n".join(rows)


def reference() -> str:
    sections = [HEADER]
    for kind, cls in sorted(SCORERS.items()):
        sections += [f"## `{kind}`", inspect.cleandoc(cls.__doc__), table(cls.Params)]
        for name, field in cls.Params.model_fields.items():
            for nested in nested_models(field.annotation):
                sections += [f"Each `{name}` entry: {inspect.cleandoc(nested.__doc__)}", table(nested)]
    return "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
