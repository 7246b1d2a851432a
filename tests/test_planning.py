"""Candidate planning in batches of prompts read from the warehouse: the same candidates as planning every prompt at
once, only those missing, the right counts, and a rerun after a crash that generates only the rest."""

import contextlib
import json

import polars as pl
import pytest

from tao_dagster.domain import DomainSettings, load_domain
from tao_dagster.generation import Generation
from tao_dagster.paths import PROJECT_ROOT
from tao_dagster.pipeline import candidates
from tao_dagster.pipeline.candidates import (
    candidate_id,
    generate_and_store,
    generate_candidates,
    plan_candidates,
    plan_requests,
    samples_of,
)
from tao_dagster.policies import Policy, PolicySettings
from tao_dagster.warehouse import Warehouse

HWU64 = PROJECT_ROOT / "assets" / "hwu64" / "domain.yaml"  # `strategies: auto`: a sweep capped per prompt
POLICY = Policy("base:planning", "no model")
PARTITIONS = ["a.jsonl", "b.jsonl"]
TRAINING = 23
PER_PROMPT = 12  # hwu64: plain x2, format_prefix x2, 8 of the 18 scenarios
TOOLS = [{"type": "function", "function": {"name": "lights", "parameters": {}}}]


def prompt_rows() -> list[dict]:
    """23 training prompts in two partitions, some with tools; a held-out one and one of a third partition get none."""
    rows = []
    for k in range(TRAINING + 2):
        messages = [{"role": "user", "content": f"turn the lights {'on' if k % 2 else 'off'} in room {k}"}]
        rows.append(
            {
                "prompt_id": f"p{k:03}",
                "messages": json.dumps(messages),
                "tools": json.dumps(TOOLS) if k % 3 == 0 else None,
                "text": messages[0]["content"],
                "heldout": k == TRAINING,
                "first_partition": "c.jsonl" if k == TRAINING + 1 else PARTITIONS[k % 2],
            }
        )
    return rows


def stored_row(prompt: str, strategy: str, sampling: str, index: int, version: str = POLICY.version) -> dict:
    return {
        "candidate_id": candidate_id(prompt, version, strategy, sampling, index),
        "prompt_id": prompt,
        "policy_version": version,
        "strategy": strategy,
        "sampling": sampling,
        "sample_index": index,
        "response": "{}",
    }


@pytest.fixture
def db(tmp_path) -> Warehouse:
    """The prompts, with every candidate of the first five stored, samples 0 and 3 of p007 to p012, and for p014 a
    candidate of another sampling and one of another policy (neither is one of the plan's)."""
    db = Warehouse(tmp_path / "warehouse.duckdb")
    db.upsert("prompts", pl.DataFrame(prompt_rows()))
    samples = [(s.name, s.settings_key(), i) for s, i in samples_of(load_domain(HWU64).strategies)]
    rows = [stored_row(f"p{k:03}", *samples[n]) for k in range(5) for n in range(PER_PROMPT)]
    rows += [stored_row(f"p{k:03}", *samples[n]) for k in range(7, 13) for n in (0, 3)]
    rows += [stored_row("p014", samples[0][0], "temperature=0.1", 0), stored_row("p014", *samples[0], version="base:other")]
    db.upsert("candidates", pl.DataFrame(rows))
    return db


STORED = 5 * PER_PROMPT + 6 * 2


def reference_plan(db: Warehouse) -> list:
    """Every prompt at once, against the set of every stored candidate id: how planning went before batches."""
    stored = set(db.query("select candidate_id from candidates where policy_version = ?", [POLICY.version])["candidate_id"])
    return list(plan_requests(load_domain(HWU64), db.training_prompts(PARTITIONS), POLICY.version, stored))


@pytest.mark.parametrize("batch", [1, 4, 5, 1000])
def test_planning_in_batches_plans_what_planning_all_at_once_does(db, batch, monkeypatch):
    reference = reference_plan(db)
    assert len(reference) == TRAINING * PER_PROMPT - STORED
    assert len({p.request.response_prefix for p in reference if p.strategy.choices}) > 8, "the sweep differs per prompt"
    assert any(p.request.tools for p in reference)
    reads, read = [], db.missing_candidates

    def counted(*args):
        rows = read(*args)
        reads.append(rows.height)
        return rows

    monkeypatch.setattr(db, "missing_candidates", counted)
    prompts, to_generate, todo = plan_candidates(db, load_domain(HWU64), POLICY.version, PARTITIONS, batch)
    assert (prompts, to_generate) == (TRAINING, len(reference))
    first = next(todo)
    assert reads == [min(batch, TRAINING)] * (5 // batch + 1), "read as asked for: up to p005, the first prompt with a missing sample"
    assert [first, *todo] == reference  # ids, prompts, partitions, strategies, sample indexes and rendered requests, in order


class FakeEngine:
    """Answers every request with its candidate's number; raises on chunk `crash_at` (counted from 1)."""

    name = "fake"

    def __init__(self, crash_at: int = 0):
        self.crash_at, self.chunks = crash_at, 0

    def generate(self, requests):
        self.chunks += 1
        if self.chunks == self.crash_at:
            raise RuntimeError("killed")
        return [Generation(f"answer {self.chunks}", 10, 3, "stop") for _ in requests]


@pytest.fixture
def engine(monkeypatch) -> FakeEngine:
    fake = FakeEngine()
    monkeypatch.setattr(candidates, "open_engine", lambda *args: contextlib.nullcontext(fake))
    return fake


def settings(tmp_path) -> PolicySettings:
    return PolicySettings(cache_dir=str(tmp_path), generation_chunk=10)


def test_the_stage_generates_the_missing_candidates_and_counts_the_rest(db, engine, tmp_path, monkeypatch):
    domain = DomainSettings(domain_file=str(HWU64))
    first = generate_candidates(db, domain, settings(tmp_path), POLICY, PARTITIONS)
    missing = TRAINING * PER_PROMPT - STORED
    assert (first["prompts"], first["candidates_generated"], first["candidates_reused"]) == (TRAINING, missing, STORED)
    assert engine.chunks == -(-missing // 10)
    monkeypatch.setattr(db, "missing_candidates", lambda *args: pytest.fail("a batch read with nothing left to generate"))
    rerun = generate_candidates(db, domain, settings(tmp_path), POLICY, PARTITIONS)
    assert (rerun["candidates_generated"], rerun["candidates_reused"]) == (0, TRAINING * PER_PROMPT)
    stored = db.query("select count(*) as n from candidates where policy_version = ?", [POLICY.version])["n"][0]
    assert stored == TRAINING * PER_PROMPT + 1  # and p014's other sampling


def test_a_rerun_after_a_crash_generates_only_the_rest(db, engine, tmp_path):
    """The crash lands in chunk 8 of 21, with planning in batches of 4 prompts: past its first batches."""
    engine.crash_at = 8
    prompts, to_generate, todo = plan_candidates(db, load_domain(HWU64), POLICY.version, PARTITIONS, 4)
    with pytest.raises(RuntimeError, match="killed"):
        generate_and_store(db, "candidates", settings(tmp_path), POLICY, todo, to_generate)
    before = db.query("select * from candidates order by candidate_id")
    assert before.height == STORED + 2 + 7 * 10, "every chunk before the crash is stored, none of the crashed one"

    engine.crash_at, engine.chunks = 0, 0
    rerun = generate_candidates(db, DomainSettings(domain_file=str(HWU64)), settings(tmp_path), POLICY, PARTITIONS)
    assert (rerun["candidates_generated"], rerun["candidates_reused"]) == (to_generate - 70, STORED + 70)
    after = db.query("select * from candidates order by candidate_id")
    assert after.filter(pl.col("candidate_id").is_in(before["candidate_id"])).equals(before), "stored candidates changed"
    assert after.filter(pl.col("policy_version") == POLICY.version).height == TRAINING * PER_PROMPT + 1  # and p014's other sampling
    assert set(after["prompt_id"]) == {f"p{k:03}" for k in range(TRAINING)}, "held-out prompts and other partitions get none"
