"""What every scorer shares: the candidate it sees, the Scorer base class with its typed parameters, and
the readers of a response (its JSON object, a field of it, a regular expression, the last number).

A scorer's `version` hashes its kind, its parameters as the domain file gave them and the content of files
they name, so changing a scorer (or its database) re-scores only what it affects.
"""

import difflib
import hashlib
import json
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


@dataclass(frozen=True)
class Scored:
    """What a scorer needs of a candidate: the prompt it answers and the text it gave."""

    prompt_id: str
    prompt: str
    response: str


@dataclass(frozen=True)
class Mark:
    """A note on a parameter's type, `Annotated[str | None, FILE]` (outermost: not inside the `| None`), that the
    Scorer acts on and the reference shows."""

    note: str


FILE = Mark("A file, relative to the domain file; versioned by its content, not its location.")
UNVERSIONED = Mark("Cannot change a score, so not part of the version.")


class ScorerParams(BaseModel):
    """A scorer kind's parameters, each with its type, default and help. Strict, so that YAML's `"5"` is
    not taken for the number 5, and closed, so that a misspelt parameter fails when the domain loads."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Scorer:
    """Sees only the prompt and the response (never a label) and gives each candidate a score in [0, 1]."""

    kind = ""
    group = False  # True when a candidate's score depends on the prompt's other candidates
    Params: ClassVar[type[ScorerParams]] = ScorerParams

    def __init__(self, name: str, weight: float = 1.0, **params):
        self.name, self.weight = name, float(weight)
        self.given = params  # as the domain file spelt them: what the version hashes
        try:
            self.params = self.Params.model_validate(params)
        except ValidationError as err:
            raise self.refusal(err) from err
        for k in self.marked(FILE):
            if k in params and not Path(params[k]).is_file():
                raise self.invalid(f"{k} {params[k]} is not a file")
        self.check()
        spec = json.dumps({"kind": self.kind, **self.identity()}, sort_keys=True, default=str)
        self.version = hashlib.sha256(spec.encode()).hexdigest()[:8]

    @classmethod
    def marked(cls, mark: Mark) -> list[str]:
        """The parameters, as a domain file spells them, whose type carries `mark`."""
        return [f.alias or name for name, f in cls.Params.model_fields.items() if mark in f.metadata]

    def check(self) -> None:
        """Checks beyond the parameters' types (a file's content, an import); runs when the domain loads,
        so a bad scorer fails before anything is generated."""

    def identity(self) -> dict:
        """What the scores depend on, hashed into the version: the parameters, with named files by content."""
        files, unversioned = self.marked(FILE), self.marked(UNVERSIONED)
        return {k: file_digest(v) if k in files else v for k, v in self.given.items() if k not in unversioned}

    def invalid(self, message: str) -> ValueError:
        return ValueError(f"scorer {self.name!r} ({self.kind}): {message}")

    def refusal(self, err: ValidationError) -> ValueError:
        """The parameter model's errors as one message in the style of `invalid`, missing parameters first."""
        errors = err.errors()
        missing = [".".join(map(str, e["loc"])) for e in errors if e["type"] == "missing"]
        problems = [self._explain(e) for e in errors if e["type"] != "missing"]
        if not missing:
            return self.invalid("; ".join(problems))
        return ValueError("; ".join([f"scorer {self.name!r} ({self.kind}) needs the parameter(s) {', '.join(missing)}", *problems]))

    def _explain(self, error) -> str:
        where, kind = ".".join(map(str, error["loc"])), error["type"]
        if kind == "value_error":  # raised by a Params validator, with the whole message
            return str(error["ctx"]["error"])
        if kind == "extra_forbidden":
            if len(error["loc"]) > 1:  # inside a nested setting, such as a json_fields rule
                return f"unknown setting {where!r}"
            known = [f.alias or name for name, f in self.Params.model_fields.items()]
            close = difflib.get_close_matches(where, known, n=1)
            return f"unknown parameter {where!r}" + (
                f", did you mean {close[0]!r}?" if close else f" (the parameters of {self.kind}: {', '.join(known) or 'none'})"
            )
        if kind == "literal_error":  # expected reads "'words' or 'chars'"
            expected = error["ctx"]["expected"].replace("'", "")
            return f"{where} must be {expected}, not {error['input']!r}"
        message = error["msg"]
        said = f"{where} {message.removeprefix('Input ')}" if message.startswith("Input ") else f"{where}: {message}"
        return f"{said}, not {reprlib.repr(error['input'])}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r}, params={self.given!r})"

    def score(self, items: list[Scored]) -> list[float]:
        raise NotImplementedError


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def extract_json(text: str) -> tuple[dict | None, bool]:
    """Return the first JSON object in `text` and whether the text was that object alone."""
    stripped = text.strip()
    start = stripped.find("{")
    if start < 0:
        return None, False
    try:
        obj, end = json.JSONDecoder().raw_decode(stripped[start:])
    except json.JSONDecodeError:
        return None, False
    if not isinstance(obj, dict):
        return None, False
    return obj, start == 0 and start + end == len(stripped)


def extract_field(text: str, field: str) -> str | None:
    obj, _ = extract_json(text)
    value = None if obj is None else obj.get(field)
    return value.strip() if isinstance(value, str) and value.strip() else None


FIELD_HELP = "Read this JSON field of the response instead of the whole response."


def response_text(response: str, field: str | None) -> str | None:
    """What a scorer reads: the JSON field `field` of the response when given, else the whole response."""
    return extract_field(response, field) if field else response.strip() or None


def compile_pattern(scorer: Scorer, pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise scorer.invalid(f"pattern {pattern!r} is not a regular expression: {err}") from err


# A number with thousands separators (1,000.5) or without (1000.5); a bare comma list like 1,2,3 is three numbers.
NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
