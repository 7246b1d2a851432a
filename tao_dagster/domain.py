"""A domain: the task instruction, the exploration strategies and the scorers, read from one YAML file.

The *plain* prompt is what production sends: the instruction plus the logged conversation. Strategies
add scaffolding (step-by-step hints, a topic guide, worked examples) used only to explore; training
pairs and evaluation always use the plain prompt, so the tuned model costs the same to serve.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from tao_dagster.errors import StageError
from tao_dagster.exploration import expand
from tao_dagster.generation import Request, Sampling
from tao_dagster.ingest import LongPrompts, prompt_id
from tao_dagster.rewards import Scorer, build_scorers
from tao_dagster.traces import LogFormatName, last_user_turn


@dataclass(frozen=True)
class Strategy:
    name: str
    template: str  # placeholders: {instruction} {prompt} and any name in Domain.snippets
    sampling: Sampling
    samples: int
    # The start of the answer, given to the model (e.g. '{"topic": "'): a structured-output nudge for exploration.
    response_prefix: str = ""
    # A capped sweep (`per_prompt`): this strategy is place `slot` of each prompt's own draw from `choices`.
    choices: tuple[str, ...] = ()
    slot: int = 0

    def settings_key(self) -> str:
        """Sampling settings and prefix (or the place in a capped sweep): part of a candidate's key."""
        if self.choices:
            digest = hashlib.sha256("\n".join(self.choices).encode()).hexdigest()[:8]
            return self.sampling.key() + f",sweep={self.slot + 1}of{len(self.choices)}:{digest}"
        return self.sampling.key() + (f",prefix={self.response_prefix}" if self.response_prefix else "")

    def prefix_for(self, conversation: list[dict]) -> str:
        """The answer start for this prompt. A capped sweep orders its choices by a hash of the prompt and takes
        place `slot`: each prompt gets a fixed subset of distinct values, every value is tried across prompts,
        the cost per prompt is bounded, and a rerun plans the same candidates."""
        if not self.choices:
            return self.response_prefix
        pid = prompt_id(conversation)
        return sorted(self.choices, key=lambda c: hashlib.sha256(f"{pid}|{c}".encode()).hexdigest())[self.slot]


PLAIN_ANSWER = "plain_answer"


@dataclass
class Domain:
    name: str
    path: Path
    instruction: str
    plain_template: str
    strategies: list[Strategy]
    scorers: list[dict]
    snippets: dict[str, str] = field(default_factory=dict)
    eval_sampling: Sampling = Sampling(temperature=0.0)
    evaluation: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)  # alarm thresholds overriding diagnostics.THRESHOLDS
    calibration: dict = field(default_factory=dict)  # {gold: CSV of prompt, response, score} judged by people
    built_scorers: list[Scorer] = field(default_factory=list, repr=False)  # from `scorers`, by load_domain

    def messages(self, conversation: list[dict], template: str | None = None) -> list[dict]:
        """Put the task instruction into the last user turn (small models follow it far better there); tool turns
        after it stay as they are."""
        template = template or self.plain_template
        ask = last_user_turn(conversation)
        last = template.format(instruction=self.instruction.strip(), prompt=conversation[ask]["content"], **self.snippets)
        return [*conversation[:ask], {"role": "user", "content": last}, *conversation[ask + 1 :]]

    def strategy_request(self, conversation: list[dict], strategy: Strategy, tools: list[dict] | None = None) -> Request:
        return Request(self.messages(conversation, strategy.template), strategy.sampling, strategy.prefix_for(conversation), tools)

    def plain_strategy(self) -> Strategy:
        """What production sends, as a strategy of one greedy sample: how the gate and the report ask for answers."""
        return Strategy(PLAIN_ANSWER, self.plain_template, self.eval_sampling, 1)

    def requested_strategies(self) -> list[Strategy]:
        """Every strategy a prompt may be sent with: exploration's, and the plain answer of the gate and the report
        (whose best-of-N ceiling also explores held-out prompts)."""
        return [*self.strategies, self.plain_strategy()]

    def resolve(self, relative: str) -> Path:
        return (self.path.parent / relative).resolve()

    def build_scorers(self) -> list[Scorer]:
        """The domain's scorers, their file parameters resolved against the domain file's folder: those load_domain
        built to check them, so a stage that asks again hashes no file twice."""
        return list(self.built_scorers)


def load_strategies(entry: dict, plain_template: str, default_max: int) -> list[Strategy]:
    """One entry of the domain file's `strategies`: a strategy per answer start in `response_prefixes` (a sweep),
    or `per_prompt` of them drawn per prompt when that caps the sweep."""
    prefixes = entry.get("response_prefixes", [entry.get("response_prefix", "")])
    settings = dict(
        name=entry["name"],
        template=entry.get("template", plain_template),
        sampling=Sampling(entry["temperature"], entry.get("top_p", 1.0), entry.get("max_tokens", default_max)),
        samples=int(entry.get("samples", 1)),
    )
    per_prompt = entry.get("per_prompt", len(prefixes))
    if not isinstance(per_prompt, int) or per_prompt < 1:
        raise ValueError(f"strategy {entry['name']!r}: per_prompt must be a whole number of at least 1, not {per_prompt!r}")
    if per_prompt >= len(prefixes):
        return [Strategy(**settings, response_prefix=prefix) for prefix in prefixes]
    return [Strategy(**settings, choices=tuple(prefixes), slot=slot) for slot in range(per_prompt)]


def domain_name(path: str | Path) -> str:
    """The domain file's `name` alone, without building its scorers; "unnamed" when the file cannot give one
    (load_domain says why, when the settings are checked)."""
    try:
        name = yaml.safe_load(Path(path).read_text()).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        return "unnamed"
    return name if isinstance(name, str) and name else "unnamed"


def load_domain(path: str | Path) -> Domain:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"domain file {path}: {err}") from err
    try:
        default_max = spec.get("max_tokens", 64)
        scorers = build_scorers(spec["scorers"], path.parent)  # a bad scorer fails here, not after the candidates are generated
        # `auto` entries become the strategies the scorers imply (exploration.py).
        entries = expand(spec["strategies"], scorers)
        strategies = [s for entry in entries for s in load_strategies(entry, spec["plain_template"], default_max)]
        domain = Domain(
            name=spec["name"],
            path=path.resolve(),
            instruction=spec["instruction"],
            plain_template=spec["plain_template"],
            strategies=strategies,
            scorers=spec["scorers"],
            snippets=spec.get("snippets", {}),
            eval_sampling=Sampling(0.0, 1.0, default_max),
            evaluation=spec.get("evaluation", {}),
            diagnostics=spec.get("diagnostics", {}),
            calibration=spec.get("calibration", {}),
            built_scorers=scorers,
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"domain file {path}: missing or malformed setting {err}") from err
    except ValueError as err:
        raise ValueError(f"domain file {path}: {err}") from err
    if len({(s.name, s.settings_key()) for s in strategies}) < len(strategies):
        raise ValueError(f"domain file {path}: two strategies share a name and sampling settings")
    return domain


class DomainSettings(BaseModel):
    """The domain file, and how its logs are read and its held-out prompts evaluated."""

    domain_file: str = Field(description="The domain's YAML file (TAO_DOMAIN).")
    text_column: str = Field("text", description="The prompt column of CSV log files.")
    heldout_fraction: float = Field(0.3, description="Share of prompts set aside, by hash, for the gate and the report only.")
    max_prompt_chars: int = Field(4000, description="Longest prompt accepted, in characters.")
    max_eval_prompts: int = Field(0, description="Evaluate at most this many held-out prompts, in a fixed hashed order (0: all).")
    long_prompts: LongPrompts = Field("skip", description="A prompt over max_prompt_chars: quarantined (skip) or cut (truncate).")
    log_format: LogFormatName = Field(
        "auto",
        description="How log records are read (docs/traces.md): auto (from each file's first records), chat_completions, "
        "openai_batch, messages, otel or langfuse. CSV files are read by their text column whatever this says.",
    )

    def load(self) -> Domain:
        try:
            return load_domain(self.domain_file)
        except ValueError as err:  # a malformed domain file fails the same way on every retry
            raise StageError(str(err)) from err
