"""Model judges: an LLM grading against the domain's rubric (a local model or any OpenAI-compatible
endpoint), and a sequence-classification reward model. They see the prompt and the response only."""

import hashlib
import itertools
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from tao_dagster.rewards.base import NUMBER, UNVERSIONED, Scored, Scorer, ScorerParams

MODEL_HELP = "A Hugging Face model id or a local model directory (versioned by its files' names, sizes and times)."


def model_files(model: str) -> dict:
    """A local model directory's files by name, size and modification time, for the version: retraining into
    the same folder re-scores, without hashing gigabytes of weights. A hub id is versioned by its name alone."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return {}
    files = sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in path.rglob("*") if f.is_file())
    return {"model_files": hashlib.sha256(json.dumps(files).encode()).hexdigest()}


def check_model(scorer: Scorer, model: str) -> None:
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

    `mode: pointwise`: each response alone gets a rating from 1 to 10, mapped to 0..1. A reply without a
    rating in range scores `default` (the middle: a judge's failure says nothing of the response).
    `mode: pairwise`: every two candidates of a prompt are compared in both orders (A/B, then B/A), which
    cancels a judge's leaning to one position; a candidate's score is its win rate over its comparisons, a
    tie or unparsable reply counting half to each, so a prompt's scores average 0.5. It is a group scorer
    and costs n(n-1) judge calls for n candidates; a lone candidate scores `default`.

    Backends: `model` alone is a local Hugging Face model (transformers, greedy, batched by `batch_size`).
    With `base_url`, `model` is served by any OpenAI-compatible endpoint (a vLLM server, say), queried
    `max_concurrency` at a time; the API key is read from the environment variable named by `api_key_env`,
    never from the domain file. Without `api_key_env` a placeholder is sent, never OPENAI_API_KEY, which
    the client would otherwise send to any server. The message and response are data in the judge's
    prompt, but a response can still address the judge ("rate this 10"): weigh a judge alongside verifiers.
    """

    kind = "llm_judge"

    class Params(ScorerParams):
        model: str = Field(description=MODEL_HELP + " With `base_url`, the model's name at the endpoint.")
        rubric: str = Field(description="What a good answer is, for the judge.")
        mode: Literal["pointwise", "pairwise"] = Field("pointwise", description="Rate each response alone, or compare candidates.")
        default: float = Field(0.5, description="The score of a reply without a rating, and of a lone pairwise candidate.")
        max_tokens: int = Field(16, gt=0, description="The longest reply of the judge.")
        base_url: str | None = Field(None, description="An OpenAI-compatible endpoint serving `model`, e.g. `http://host:8000/v1`.")
        api_key_env: Annotated[str | None, UNVERSIONED] = Field(None, description="The environment variable with the endpoint's API key.")
        batch_size: Annotated[int, UNVERSIONED] = Field(16, gt=0, description="Conversations per batch of a local model.")
        max_concurrency: Annotated[int, UNVERSIONED] = Field(8, gt=0, description="Requests in flight to the endpoint.")
        timeout_seconds: Annotated[float, UNVERSIONED] = Field(120, gt=0, description="The time limit of one request to the endpoint.")

        @model_validator(mode="after")
        def _key_for_an_endpoint(self):
            if self.api_key_env and self.base_url is None:
                raise ValueError("api_key_env is for an endpoint: give base_url as well")
            return self

    def check(self):
        self.group = self.params.mode == "pairwise"
        key_env = self.params.api_key_env
        if key_env and not os.environ.get(key_env):
            raise self.invalid(f"the environment variable {key_env} (api_key_env) is not set")
        if self.params.base_url is None:
            check_model(self, self.params.model)

    def identity(self):
        return super().identity() | (model_files(self.params.model) if self.params.base_url is None else {})

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
        return [{"role": "user", "content": template.format(rubric=self.params.rubric, **fields)}]

    def _or_default(self, score: float | None) -> float:
        return self.params.default if score is None else score

    def replies(self, conversations: list[list[dict]]) -> list[str]:
        """The judge's greedy reply to each conversation."""
        return self._ask_local(conversations) if self.params.base_url is None else self._ask_endpoint(conversations)

    def _ask_local(self, conversations: list[list[dict]]) -> list[str]:
        from tao_dagster.generation import EngineSettings, Request, Sampling, TransformersEngine

        engine = TransformersEngine(self.params.model, EngineSettings(engine="transformers", batch_size=self.params.batch_size))
        try:
            sampling = Sampling(0.0, max_tokens=self.params.max_tokens)
            return [g.text for g in engine.generate([Request(c, sampling) for c in conversations])]
        finally:
            engine.close()

    def _ask_endpoint(self, conversations: list[list[dict]]) -> list[str]:
        from openai import APIError, OpenAI

        p = self.params
        key = os.environ[p.api_key_env] if p.api_key_env else "none"
        client = OpenAI(base_url=p.base_url, api_key=key, timeout=p.timeout_seconds)

        def ask(messages: list[dict]) -> str:
            reply = client.chat.completions.create(model=p.model, messages=messages, temperature=0.0, max_tokens=p.max_tokens)
            return reply.choices[0].message.content or ""

        pool = ThreadPoolExecutor(p.max_concurrency)
        try:
            return list(pool.map(ask, conversations))
        except APIError as err:
            raise RuntimeError(f"scorer {self.name!r} (llm_judge): the judge at {p.base_url} failed: {err}") from err
        finally:
            pool.shutdown(cancel_futures=True)
            client.close()


class RewardModelScorer(Scorer):
    """A Hugging Face sequence-classification reward model, e.g. the Skywork-Reward family: the prompt and
    response are rendered as a conversation in the model's chat template, and its single logit is the
    score, squashed to 0..1 by a sigmoid unless `sigmoid: false` (raw logits are unbounded and would
    outweigh the other scorers in the weighted mean). Batched without gradients.
    """

    kind = "reward_model"

    class Params(ScorerParams):
        model: str = Field(description=MODEL_HELP)
        dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
            "auto", description="The precision: `auto` is the machine's (see hardware.py); float32 for exact scores."
        )
        sigmoid: bool = Field(True, description="Squash the logit to 0..1.")
        batch_size: Annotated[int, UNVERSIONED] = Field(8, gt=0, description="Conversations per batch.")

    def check(self):
        check_model(self, self.params.model)

    def identity(self):
        return super().identity() | model_files(self.params.model)

    def score(self, items):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from tao_dagster.generation import chat_token_ids
        from tao_dagster.hardware import compute_precision

        path, dtype = self.params.model, self.params.dtype
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
        size = self.params.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), size):
                batch = order[start : start + size]
                encoded = tokenizer.pad({"input_ids": [ids[k] for k in batch]}, return_tensors="pt")
                for k, logit in zip(batch, model(**encoded).logits[:, 0].float().tolist()):
                    logits[k] = logit
        return [1 / (1 + math.exp(-x)) for x in logits] if self.params.sigmoid else logits
