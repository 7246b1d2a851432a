"""Candidate responses: several per training prompt, from the domain's exploration strategies and sampling."""

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import polars as pl

from tao_dagster.domain import Domain, DomainSettings, Strategy
from tao_dagster.evaluation import Markdown, markdown_table
from tao_dagster.generation import Generation, Request, open_engine
from tao_dagster.policies import Policy, PolicySettings
from tao_dagster.warehouse import Warehouse

logger = logging.getLogger(__name__)
PRODUCTION = "production"  # the strategy (and policy version prefix) of a reply production gave


def candidate_id(prompt_id: str, policy_version: str, strategy: str, sampling: str, index: int) -> str:
    return hashlib.sha256(f"{prompt_id}|{policy_version}|{strategy}|{sampling}|{index}".encode()).hexdigest()[:16]


PLAN_BATCH = 50_000  # training prompts read from the warehouse at a time: planning holds one batch, not every prompt


@dataclass(frozen=True)
class Planned:
    """A candidate to generate, and where it goes."""

    candidate_id: str
    prompt_id: str
    partition: str
    strategy: Strategy
    index: int
    request: Request


def samples_of(strategies: list[Strategy]) -> list[tuple[Strategy, int]]:
    """Each prompt's samples, in planning order: every strategy's `samples` of it."""
    return [(strategy, index) for strategy in strategies for index in range(strategy.samples)]


def planned(spec: Domain, row: dict, policy_version: str, samples: list[tuple[Strategy, int]], partition: str) -> Iterator[Planned]:
    """The candidates of these samples of one prompt (prompt_id, messages, tools), each request rendered as it is asked for."""
    conversation, tools = json.loads(row["messages"]), json.loads(row["tools"] or "null")
    for strategy, index in samples:
        cid = candidate_id(row["prompt_id"], policy_version, strategy.name, strategy.settings_key(), index)
        yield Planned(cid, row["prompt_id"], partition, strategy, index, spec.strategy_request(conversation, strategy, tools))


def plan_requests(
    spec: Domain,
    prompts: pl.DataFrame,
    policy_version: str,
    existing: set[str],
    partition: str = "",
    strategies: list[Strategy] | None = None,
) -> Iterator[Planned]:
    """Every sample of the strategies (the domain's if None) for each prompt (prompt_id, messages, tools[,
    first_partition]) not in `existing` yet, rendered lazily."""
    samples = samples_of(spec.strategies if strategies is None else strategies)
    for row in prompts.iter_rows(named=True):
        pid = row["prompt_id"]
        missing = [(s, i) for s, i in samples if candidate_id(pid, policy_version, s.name, s.settings_key(), i) not in existing]
        if missing:
            yield from planned(spec, row, policy_version, missing, row.get("first_partition", partition))


def plan_candidates(
    db: Warehouse, spec: Domain, policy_version: str, partitions: list[str], batch: int = PLAN_BATCH
) -> tuple[int, int, Iterator[Planned]]:
    """(training prompts in the partitions, how many of their candidates this policy has not generated yet, those
    candidates). The counts are one query; the candidates are read `batch` prompts at a time as generation asks for
    them and each request is rendered when its chunk is generated, so memory holds a batch whatever the number of
    prompts, and no Python set of every candidate id is built."""
    samples = samples_of(spec.strategies)
    keys = pl.DataFrame(
        [{"sample": k, "strategy": s.name, "sampling": s.settings_key(), "sample_index": i} for k, (s, i) in enumerate(samples)],
        schema={"sample": pl.Int32, "strategy": pl.String, "sampling": pl.String, "sample_index": pl.Int32},
    )
    prompts, stored = db.stored_candidate_count(partitions, policy_version, keys)

    def todo() -> Iterator[Planned]:
        after = ""
        while (rows := db.missing_candidates(partitions, policy_version, keys, after, batch)).height:
            for row in rows.iter_rows(named=True):
                if row["missing"]:
                    yield from planned(spec, row, policy_version, [samples[k] for k in row["missing"]], row["first_partition"])
            after = rows["prompt_id"][-1]

    to_generate = prompts * len(samples) - stored
    return prompts, to_generate, islice(todo(), to_generate)  # no batch is read past the last one counted


def candidate_frame(generated: list[tuple[Planned, Generation]], version: str, engine: str) -> pl.DataFrame:
    """Warehouse rows of generated candidates."""
    return pl.DataFrame(
        [
            {
                "candidate_id": p.candidate_id,
                "prompt_id": p.prompt_id,
                "partition": p.partition,
                "policy_version": version,
                "strategy": p.strategy.name,
                "sampling": p.strategy.settings_key(),
                "sample_index": p.index,
                "response": out.text,
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": out.completion_tokens,
                "finish_reason": out.finish_reason,
                "engine": engine,
            }
            for p, out in generated
        ]
    )


def skipped_frame(table: str, skipped: list[tuple[Planned, Generation]], version: str) -> pl.DataFrame:
    """Warehouse rows of the requests skipped as too long for the model's window, with the reason."""
    return pl.DataFrame(
        [
            {"stage": table, "candidate_id": p.candidate_id, "prompt_id": p.prompt_id, "policy_version": version}
            | {"strategy": p.strategy.name, "prompt_tokens": out.prompt_tokens, "reason": out.skipped}
            for p, out in skipped
        ]
    )


@dataclass
class Generated:
    """What one generate_and_store did."""

    generated: int = 0
    skipped: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def generate_and_store(
    db: Warehouse,
    table: str,
    settings: PolicySettings,
    policy: Policy,
    todo: Iterable[Planned],
    total: int,
    columns: list[str] | None = None,
    log=logger,
) -> Generated:
    """Generate `todo` (`total` of them) with the policy and store it in `table` (only `columns` of a candidate row, if
    given), chunk by chunk, taking each chunk from `todo` only when it is its turn: one transaction per chunk, so a
    crash keeps every chunk stored before it and the rerun generates only what is still missing. A request too long
    for the model's window is recorded in `skipped_requests` with its reason, and the rest of its chunk goes on."""
    done = Generated()
    todo = iter(todo)
    chunk = list(islice(todo, settings.generation_chunk))
    if not chunk:
        return done
    with open_engine(policy.path, settings.engine_settings()) as engine:
        while chunk:
            began = time.perf_counter()
            outputs = engine.generate([p.request for p in chunk])
            done.seconds += time.perf_counter() - began
            kept = [(p, out) for p, out in zip(chunk, outputs) if not out.skipped]
            skipped = [(p, out) for p, out in zip(chunk, outputs) if out.skipped]
            with db.transaction() as con:
                if kept:
                    frame = candidate_frame(kept, policy.version, engine.name)
                    db.insert(con, table, frame.select(columns) if columns else frame)
                    done.completion_tokens += int(frame["completion_tokens"].sum())
                if skipped:
                    db.insert(con, "skipped_requests", skipped_frame(table, skipped, policy.version))
            for p, out in skipped:
                log.warning(f"{table}: skipped {p.strategy.name} for prompt {p.prompt_id}: {out.skipped}")
            done.generated += len(kept)
            done.skipped += len(skipped)
            log.info(f"{done.generated} of {total} {table} generated and stored, {done.skipped} skipped as too long")
            chunk = list(islice(todo, settings.generation_chunk))
    return done


def production_candidates(db: Warehouse, partitions: list[str]) -> int:
    """The reply production gave to each training prompt of these partitions, as one more candidate of it (strategy
    `production`), scored like the others. Its policy version names the model that gave it, which no policy version
    equals, so a round never trains on it; it is keyed by its text, as its sampling settings are not known."""
    prompts = db.training_prompts(partitions).select("prompt_id", "first_partition")
    replies = db.production_replies(prompts["prompt_id"].to_list()).join(prompts, on="prompt_id")
    rows = []
    for pid, model, reply, partition in replies.iter_rows():
        version = f"{PRODUCTION}:{model or 'unknown'}"
        cid = candidate_id(pid, version, PRODUCTION, hashlib.sha256(reply.encode()).hexdigest()[:16], 0)
        rows.append(
            {
                "candidate_id": cid,
                "prompt_id": pid,
                "partition": partition,
                "policy_version": version,
                "strategy": PRODUCTION,
                "sampling": "",
                "sample_index": 0,
                "response": reply,
                "engine": PRODUCTION,
            }
        )
    if rows:
        db.replace_candidates(PRODUCTION, pl.DataFrame(rows))
    return len(rows)


def generate_candidates(
    db: Warehouse, domain: DomainSettings, settings: PolicySettings, policy: Policy, partitions: list[str], log=logger
) -> dict:
    """Generate and store the missing candidates of these partitions, and take in production's replies."""
    spec = domain.load()
    n_prompts, n_todo, todo = plan_candidates(db, spec, policy.version, partitions)
    log.info(f"{n_prompts} prompts, {n_todo} candidates to generate with {policy.version}")
    done = generate_and_store(db, "candidates", settings, policy, todo, n_todo, log=log)
    stats = db.candidate_stats(policy.version, partitions)
    return {
        "policy_version": policy.version,
        "production_candidates": production_candidates(db, partitions),
        "prompts": n_prompts,
        "candidates_generated": done.generated,
        "candidates_skipped": done.skipped,  # too long for the model's window: in skipped_requests with the reason
        "candidates_reused": n_prompts * len(samples_of(spec.strategies)) - n_todo,
        "generation_seconds": round(done.seconds, 1),
        "tokens_per_second": round(done.completion_tokens / done.seconds, 1) if done.seconds else 0.0,
        "completion_tokens": int(stats["candidates"].dot(stats["mean_tokens"])) if stats.height else 0,
        "per_strategy": Markdown(markdown_table(stats.to_dicts())),
    }
