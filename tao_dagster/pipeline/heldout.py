"""Held-out answers, shared by the promotion gate and the report: each policy answers each held-out prompt once
(greedy, plain prompt), and the answers are scored by the domain's pointwise scorers."""

import json

import numpy as np
import polars as pl

from tao_dagster.domain import Domain, DomainSettings
from tao_dagster.errors import StageError
from tao_dagster.generation import open_engine
from tao_dagster.policies import Policy, PolicySettings
from tao_dagster.rewards import Scored, Scorer, combine, score_frame
from tao_dagster.warehouse import Warehouse


def heldout_prompts(db: Warehouse, domain: DomainSettings) -> pl.DataFrame:
    prompts = db.heldout_prompts(domain.max_eval_prompts)
    if prompts.height == 0:
        raise StageError("no held-out prompts: ingest more log files or raise the domain resource's heldout_fraction")
    return prompts


def heldout_answers(db: Warehouse, spec: Domain, settings: PolicySettings, policy: Policy, prompts: pl.DataFrame) -> pl.DataFrame:
    """The policy's answers to `prompts`, generating only those not stored yet; sorted by prompt id."""
    todo = prompts.filter(~pl.col("prompt_id").is_in(db.answers(policy.version)["prompt_id"].to_list()))
    if todo.height:
        with open_engine(policy.path, settings.engine_settings()) as llm:
            for chunk in todo.iter_slices(settings.generation_chunk):  # stored chunk by chunk, like candidates
                outputs = llm.generate([spec.plain_request(json.loads(m)) for m in chunk["messages"]])
                answers = {
                    "policy_version": policy.version,
                    "prompt_id": chunk["prompt_id"],
                    "response": [o.text for o in outputs],
                    "completion_tokens": [o.completion_tokens for o in outputs],
                }
                db.upsert("eval_answers", pl.DataFrame(answers))
    return db.answers(policy.version).join(prompts.select("prompt_id", "text"), on="prompt_id").sort("prompt_id")


def pointwise_scorers(scorers: list[Scorer]) -> list[Scorer]:
    """Scorers that judge one answer alone: a held-out prompt has one answer per model, no group to agree with."""
    return [s for s in scorers if not s.group]


def answer_rewards(answers: pl.DataFrame, scorers: list[Scorer]) -> np.ndarray:
    """Combined reward of each answer, in the frame's (prompt id) order."""
    items = [Scored(pid, text, response) for pid, text, response in answers.select("prompt_id", "text", "response").iter_rows()]
    scores = score_frame(items, answers["prompt_id"].to_list(), scorers)
    return combine(scores, scorers).sort("candidate_id")["reward"].to_numpy()
