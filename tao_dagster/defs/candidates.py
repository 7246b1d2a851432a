"""candidate_responses: several responses per prompt from varied exploration strategies and sampling."""

import hashlib
import json
import time

import dagster as dg
import polars as pl

from tao_dagster.defs.deploy import gpu_step
from tao_dagster.defs.partitions import prompt_partition_asset
from tao_dagster.defs.policy import current_policy
from tao_dagster.defs.prompts import raw_prompts
from tao_dagster.defs.resources import (
    TRANSIENT_RETRY,
    DomainResource,
    MlflowResource,
    PolicyResource,
    WarehouseResource,
    stops_when_interrupted,
)
from tao_dagster.evaluation import markdown_table
from tao_dagster.generation import Generation, open_engine
from tao_dagster.hardware import compute_precision


def candidate_id(prompt_id: str, policy_version: str, strategy: str, sampling: str, index: int) -> str:
    return hashlib.sha256(f"{prompt_id}|{policy_version}|{strategy}|{sampling}|{index}".encode()).hexdigest()[:16]


def candidate_frame(todo: list[tuple], outputs: list[Generation], version: str, engine: str) -> pl.DataFrame:
    """Warehouse rows of generated candidates, from (candidate id, prompt id, partition, strategy, index, request)."""
    return pl.DataFrame(
        [
            {
                "candidate_id": cid,
                "prompt_id": pid,
                "partition": partition,
                "policy_version": version,
                "strategy": strategy.name,
                "sampling": strategy.settings_key(),
                "sample_index": index,
                "response": out.text,
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": out.completion_tokens,
                "finish_reason": out.finish_reason,
                "engine": engine,
            }
            for (cid, pid, partition, strategy, index, _), out in zip(todo, outputs)
        ]
    )


@prompt_partition_asset(
    deps=[raw_prompts],
    kinds={"vllm", "duckdb"},
    retry_policy=TRANSIENT_RETRY,
    op_tags=gpu_step(),
    description="N candidate responses per training prompt across the domain's exploration strategies and "
    "sampling settings, from the current policy (the champion checkpoint once one is promoted, else the base model). "
    "Generated and stored in chunks, and only missing candidates are generated, so a rerun after a crash continues "
    "where it stopped; held-out prompts never get candidates.",
)
@stops_when_interrupted
def candidate_responses(
    context: dg.AssetExecutionContext,
    domain: DomainResource,
    policy: PolicyResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    spec = domain.load()
    db = warehouse.get()
    current = current_policy(db, policy, mlflow)
    version = current.version
    keys = list(context.partition_keys)
    prompts = db.query(
        "select prompt_id, messages, first_partition from prompts where not heldout and first_partition in (select unnest(?))", [keys]
    )
    existing = set(db.query("select candidate_id from candidates where policy_version = ?", [version])["candidate_id"])
    todo = []
    for pid, messages, partition in prompts.iter_rows():
        conversation = json.loads(messages)
        for strategy in spec.strategies:
            sampling = strategy.settings_key()
            for index in range(strategy.samples):
                cid = candidate_id(pid, version, strategy.name, sampling, index)
                if cid not in existing:
                    todo.append((cid, pid, partition, strategy, index, spec.strategy_request(conversation, strategy)))
    context.log.info(f"{len(prompts)} prompts, {len(todo)} candidates to generate with {version}")

    generated, new_tokens, seconds = 0, 0, 0.0
    if todo:
        with open_engine(current.path, policy.engine_settings()) as engine:
            for start in range(0, len(todo), policy.generation_chunk):
                chunk = todo[start : start + policy.generation_chunk]
                began = time.perf_counter()
                outputs = engine.generate([t[5] for t in chunk])
                seconds += time.perf_counter() - began
                frame = candidate_frame(chunk, outputs, version, engine.name)
                # One transaction per chunk: a crash keeps every chunk stored before it, and the rerun
                # generates only the candidates still missing.
                db.upsert("candidates", frame)
                generated += frame.height
                new_tokens += int(frame["completion_tokens"].sum())
                context.log.info(f"{generated} of {len(todo)} candidates generated and stored")

    stats = db.query(
        """select strategy, sampling, count(*) as candidates, round(avg(completion_tokens), 1) as mean_tokens,
                  round(avg(case when finish_reason = 'length' then 1 else 0 end), 3) as truncated_share
           from candidates where policy_version = ? and partition in (select unnest(?))
           group by strategy, sampling order by strategy, sampling""",
        [version, keys],
    )
    tokens = int(stats["candidates"].dot(stats["mean_tokens"])) if stats.height else 0
    return dg.MaterializeResult(
        metadata={
            "policy_version": version,
            "prompts": len(prompts),
            "candidates_generated": generated,
            "candidates_reused": len(prompts) * sum(s.samples for s in spec.strategies) - generated,
            "generation_seconds": round(seconds, 1),
            "tokens_per_second": round(new_tokens / seconds, 1) if seconds else 0.0,
            "completion_tokens": tokens,
            "per_strategy": dg.MetadataValue.md(markdown_table(stats.to_dicts())),
            **compute_precision().metadata(),
        }
    )
