"""Exploration derived from the domain's scorers (`strategies: auto`), so a new domain explores well without
hand-written strategies.

The scorers already say what a good answer looks like: the JSON fields and their order (json_fields,
json_schema, any scorer's `field`), and the values a categorical field may take (json_fields `allowed`,
embedding_choice `descriptions`, a schema `enum`). From that come three strategies, written as the
entries a user would put in the domain file, so they load through the same code and key their candidates
the same way: `plain` sampling, a `format_prefix` that opens the first field, and a sweep with one
candidate per allowed value of the categorical field, the model writing the rest and the scorers choosing.
"""

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tao_dagster.rewards import Scorer
from tao_dagster.rewards.embeddings import EmbeddingChoiceScorer
from tao_dagster.rewards.rules import JsonFieldsScorer, JsonSchemaScorer

AUTO = "auto"


class AutoSettings(BaseModel):
    """The settings of an `auto` entry: `{auto: {sweep_cap: 8}}`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    sweep_cap: int = Field(
        8, ge=1, description="Most sweep candidates per prompt; a field with more values sweeps a subset drawn per prompt by its hash."
    )


DEFAULTS = AutoSettings()


def expand(entries, scorers: list[Scorer]) -> list[dict]:
    """The domain file's `strategies` with `auto` (the whole setting, or an entry of the list) replaced by the derived entries."""
    if entries == AUTO:
        entries = [AUTO]
    out = []
    for entry in entries:
        if entry == AUTO:
            out += derive(scorers)
        elif isinstance(entry, dict) and set(entry) == {AUTO}:
            out += derive(scorers, auto_settings(entry[AUTO] or {}))
        else:
            out.append(entry)
    return out


def auto_settings(given) -> AutoSettings:
    try:
        return AutoSettings.model_validate(given)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors())
        raise ValueError(f"strategies: auto: {problems} (the settings of auto: {', '.join(AutoSettings.model_fields)})") from err


def derive(scorers: list[Scorer], settings: AutoSettings = DEFAULTS) -> list[dict]:
    """Strategy entries for these scorers: plain always; a format prefix where the answer is JSON; a sweep where a field is categorical."""
    strategies = [{"name": "plain", "temperature": 0.7, "samples": 2}]
    layout = json_layout(scorers)
    if not layout:
        return strategies
    first = next(iter(layout))
    strategies.append({"name": "format_prefix", "response_prefix": "{" + key(first) + layout[first], "temperature": 0.8, "samples": 2})
    values = categorical_values(scorers)
    # The field the embedding_choice scorer reads first: there the values are told apart by content, not only allowed.
    preferred = [s.params.field for s in scorers if isinstance(s, EmbeddingChoiceScorer)]
    swept = next((f for f in [*preferred, *layout] if values.get(f)), None)
    if swept is None:
        return strategies
    rest = [f for f in layout if f != swept]
    tail = f", {key(rest[0])}{layout[rest[0]]}" if rest else "}"
    sweep = {
        "name": f"{swept}_sweep",
        "response_prefixes": ["{" + key(swept) + json.dumps(v, ensure_ascii=False) + tail for v in values[swept]],
        "temperature": 0.5,
        "samples": 1,
    }
    if len(values[swept]) > settings.sweep_cap:
        sweep["per_prompt"] = settings.sweep_cap
    return [*strategies, sweep]


def key(field: str) -> str:
    return json.dumps(field, ensure_ascii=False) + ": "


def json_layout(scorers: list[Scorer]) -> dict[str, str]:
    """The answer's JSON fields, in the format scorers' order and then the other fields scorers read, each with
    how its value opens: a quote for a string, nothing for a schema's number, object or list."""
    layout = {}
    for s in scorers:
        if isinstance(s, JsonFieldsScorer):
            for name in s.params.fields:
                layout.setdefault(name, '"')
        elif isinstance(s, JsonSchemaScorer):
            for name, prop in schema_properties(s).items():
                layout.setdefault(name, '"' if prop.get("type") == "string" or string_enum(prop) else "")
    for s in scorers:
        field = getattr(s.params, "field", None)
        if isinstance(field, str):
            layout.setdefault(field, '"')
    return layout


def categorical_values(scorers: list[Scorer]) -> dict[str, list[str]]:
    """Each field some scorer lists values for -> the values, in the first such scorer's order, kept only where
    every scorer that lists values for the field allows them (a value one scorer refuses would only lose)."""
    found: dict[str, list[str]] = {}
    for s in scorers:
        if isinstance(s, JsonFieldsScorer):
            listed = {name: rule.allowed for name, rule in s.params.fields.items() if rule.allowed}
        elif isinstance(s, EmbeddingChoiceScorer):
            listed = {s.params.field: list(s.params.descriptions)}
        elif isinstance(s, JsonSchemaScorer):
            listed = {name: prop["enum"] for name, prop in schema_properties(s).items() if string_enum(prop)}
        else:
            continue
        for name, allowed in listed.items():
            found[name] = [v for v in found[name] if v in allowed] if name in found else list(allowed)
    return found


def schema_properties(scorer: JsonSchemaScorer) -> dict[str, dict]:
    properties = scorer.validator.schema.get("properties", {})
    return {name: prop for name, prop in properties.items() if isinstance(prop, dict)}


def string_enum(prop: dict) -> bool:
    enum = prop.get("enum")
    return isinstance(enum, list) and bool(enum) and all(isinstance(v, str) for v in enum)
