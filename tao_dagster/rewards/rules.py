"""Rule scorers: the response's form checked without a model (JSON fields, a JSON Schema, a regular
expression, length bounds, required and forbidden terms). Fast, exact and hard to game."""

import json
import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tao_dagster.rewards.base import FIELD_HELP, FILE, Scorer, ScorerParams, compile_pattern, extract_json, response_text


class FieldRule(ScorerParams):
    """What one field of the JSON object must hold to earn its share."""

    allowed: list[str] | None = Field(None, description="The values the field may take (any when not given).")
    min_words: int = Field(1, description="The fewest words the value may have.")
    max_words: int | None = Field(None, description="The most words the value may have (no bound when not given).")


class JsonFieldsScorer(Scorer):
    """Format verifier: the response is one JSON object whose fields have allowed values or lengths.

    0.3 for parsing, half that when the JSON is wrapped in other text (extra text costs tokens to serve),
    and an equal share of 0.7 for each field that keeps its rule; 0.1 off for keys not listed.
    """

    kind = "json_fields"

    class Params(ScorerParams):
        fields: dict[str, FieldRule] = Field(description="The fields the object must have, each with its rule (below).")

    def score(self, items):
        return [self._one(item.response) for item in items]

    def _one(self, text: str) -> float:
        fields = self.params.fields
        obj, alone = extract_json(text)
        if obj is None:
            return 0.0
        score = 0.3 if alone else 0.15
        share = 0.7 / max(len(fields), 1)
        for name, rule in fields.items():
            value = obj.get(name)
            if not isinstance(value, str):
                continue
            if rule.allowed is not None and value.strip() not in rule.allowed:
                continue
            words = len(value.split())
            if not rule.min_words <= words <= (math.inf if rule.max_words is None else rule.max_words):
                continue
            score += share
        if set(obj) - set(fields):
            score -= 0.1  # unexpected keys
        return max(score, 0.0)


class RegexScorer(Scorer):
    """1 when the response matches `pattern` (or, with `forbid: true`, when it does not)."""

    kind = "regex"

    class Params(ScorerParams):
        pattern: str = Field(description="A Python regular expression, searched anywhere in the response (`.` matches newlines).")
        forbid: bool = Field(False, description="Score 1 when the response does not match.")

    def check(self):
        self.pattern = compile_pattern(self, self.params.pattern)

    def score(self, items):
        return [float(bool(self.pattern.search(i.response)) != self.params.forbid) for i in items]


class JsonSchemaScorer(Scorer):
    """The response's JSON object validated against a JSON Schema, given inline (`schema`) or as a file (`schema_file`).

    1 when the response is the valid object alone, `wrapped_score` when it is valid but inside other text
    (which costs tokens to serve), 0 when there is no JSON object or it breaks the schema.
    """

    kind = "json_schema"

    class Params(ScorerParams):
        schema_: dict | None = Field(None, alias="schema", description="The JSON Schema, inline.")
        schema_file: Annotated[str | None, FILE] = Field(None, description="The JSON Schema, as a JSON file.")
        wrapped_score: float = Field(0.5, description="The score of a valid object inside other text.")

        @model_validator(mode="after")
        def _one_schema(self):
            if (self.schema_ is None) == (self.schema_file is None):
                raise ValueError("needs one of schema (inline) or schema_file")
            return self

    def check(self):
        from jsonschema import exceptions, validators

        schema = self.params.schema_
        if schema is None:
            try:
                schema = json.loads(Path(self.params.schema_file).read_text())
            except (OSError, ValueError) as err:
                raise self.invalid(f"schema_file {self.params.schema_file} is not readable JSON: {err}") from err
        try:
            cls = validators.validator_for(schema)
            cls.check_schema(schema)
        except exceptions.SchemaError as err:
            raise self.invalid(f"not a valid JSON Schema: {err.message}") from err
        self.validator = cls(schema)

    def score(self, items):
        out = []
        for item in items:
            obj, alone = extract_json(item.response)
            valid = obj is not None and self.validator.is_valid(obj)
            out.append(0.0 if not valid else 1.0 if alone else self.params.wrapped_score)
        return out


class LengthScorer(Scorer):
    """Length bounds on the response (or its JSON field `field`): `min` and/or `max`, in words or chars.

    1 inside the bounds. Outside, the score falls smoothly, length/min below and max/length above, so of
    two over-long answers the shorter still ranks higher, where a step would tie them; `smooth: false`
    gives the 0/1 step. An empty response or a missing field scores 0.
    """

    kind = "length"

    class Params(ScorerParams):
        min: float | None = Field(None, description="The shortest length that scores 1.")
        max: float | None = Field(None, description="The longest length that scores 1.")
        unit: Literal["words", "chars"] = Field("words", description="What a length counts.")
        smooth: bool = Field(True, description="Fall smoothly outside the bounds; false gives a 0/1 step.")
        field: str | None = Field(None, description=FIELD_HELP)

        @model_validator(mode="after")
        def _bounds(self):
            if self.min is None and self.max is None:
                raise ValueError("needs min, max or both")
            if not 0 <= (self.min or 0) <= (math.inf if self.max is None else self.max):
                raise ValueError(f"needs 0 <= min <= max, got min {self.min} and max {self.max}")
            return self

    def score(self, items):
        p = self.params
        low, high = p.min or 0, math.inf if p.max is None else p.max
        out = []
        for item in items:
            text = response_text(item.response, p.field)
            n = 0 if text is None else len(text.split()) if p.unit == "words" else len(text)
            if n == 0:
                out.append(0.0)
            elif low <= n <= high:
                out.append(1.0)
            elif p.smooth:
                out.append(n / low if n < low else high / n)
            else:
                out.append(0.0)
        return out


def term_pattern(term: str) -> re.Pattern:
    """A term or phrase as a whole word, any case and any spacing: "app" does not match "happy"."""
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, term.split())) + r"(?!\w)", re.IGNORECASE)


class TermsScorer(Scorer):
    """Terms the response (or its JSON field `field`) must contain (`required`) or must not (`forbidden`).

    Terms match case-insensitively as whole words or phrases. The score is the share of rules satisfied:
    each required term present and each forbidden term absent counts one. A missing field scores 0.
    """

    kind = "terms"

    class Params(ScorerParams):
        required: list[str] = Field([], description="Terms the response must contain.")
        forbidden: list[str] = Field([], description="Terms the response must not contain.")
        field: str | None = Field(None, description=FIELD_HELP)

        @field_validator("required", "forbidden", mode="before")
        @classmethod
        def _a_list(cls, terms):
            if not isinstance(terms, list):  # a lone string is the likely slip
                raise ValueError("required and forbidden must be lists of terms")
            return terms

        @model_validator(mode="after")
        def _some_terms(self):
            terms = [*self.required, *self.forbidden]
            if not terms:
                raise ValueError("needs a list of required or forbidden terms")
            if not all(t.strip() for t in terms):
                raise ValueError("terms must be non-empty strings")
            return self

    def score(self, items):
        rules = [(term_pattern(t), True) for t in self.params.required]
        rules += [(term_pattern(t), False) for t in self.params.forbidden]
        out = []
        for item in items:
            text = response_text(item.response, self.params.field)
            out.append(0.0 if text is None else sum(bool(p.search(text)) == want for p, want in rules) / len(rules))
        return out
