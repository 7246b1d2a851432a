"""Self-consistency: agreement among a prompt's own candidates, the reward TTRL uses where no label
says which answer is right. A group scorer, left out where a prompt has a single answer (evaluation)."""

from typing import Literal

from pydantic import Field, model_validator

from tao_dagster.rewards.base import NUMBER, Scorer, ScorerParams, compile_pattern, extract_field


class SelfConsistencyScorer(Scorer):
    """Majority agreement of an extracted answer across one prompt's candidates (as in TTRL).

    `extract` says how the answer is found: `json_field` (the default) reads the JSON field `field`;
    `regex` takes the last match of `pattern` (its first capture group if it has one), since a worked
    answer states the result last; `last_number` takes the last number, with separators dropped and
    compared as a value, so "1,000" and "1000.0" agree. A candidate without an answer scores 0.
    """

    kind = "self_consistency"
    group = True

    class Params(ScorerParams):
        extract: Literal["json_field", "regex", "last_number"] = Field("json_field", description="How the answer is found.")
        field: str | None = Field(None, description="The JSON field holding the answer (for `extract: json_field`).")
        pattern: str | None = Field(None, description="A regular expression whose last match is the answer (for `extract: regex`).")

        @model_validator(mode="after")
        def _what_extract_needs(self):
            needs = {"json_field": "field", "regex": "pattern"}.get(self.extract)
            if needs and getattr(self, needs) is None:
                raise ValueError(f"extract: {self.extract} needs the parameter {needs}")
            return self

    def check(self):
        if self.params.extract == "regex":
            self.pattern = compile_pattern(self, self.params.pattern)

    def answer(self, text: str) -> str | None:
        if self.params.extract == "json_field":
            return extract_field(text, self.params.field)
        if self.params.extract == "regex":
            matches = list(self.pattern.finditer(text))
            if not matches:
                return None
            value = matches[-1].group(1 if self.pattern.groups else 0)
            return value.strip() if value and value.strip() else None
        numbers = NUMBER.findall(text)
        return str(float(numbers[-1].replace(",", ""))) if numbers else None

    def score(self, items):
        answers = [self.answer(i.response) for i in items]
        by_prompt: dict[str, list[str]] = {}
        for item, answer in zip(items, answers):
            if answer is not None:
                by_prompt.setdefault(item.prompt_id, []).append(answer)
        out = []
        for item, answer in zip(items, answers):
            votes = by_prompt.get(item.prompt_id, [])
            out.append(votes.count(answer) / len(votes) if answer is not None and len(votes) > 1 else 0.0)
        return out
