"""Production's replies from the logs: stored with their call, one more candidate of their prompt (strategy
`production`), scored like the others, never trained on, and the baseline the report compares the tuned model with."""

import json

import polars as pl
import pytest

from tao_dagster.context_window import WindowCheck
from tao_dagster.domain import DomainSettings
from tao_dagster.pipeline.candidates import PRODUCTION, generate_candidates, production_candidates
from tao_dagster.pipeline.heldout import answer_rewards, pointwise_scorers
from tao_dagster.pipeline.prompts import ingest_partition
from tao_dagster.pipeline.report import evaluate, versus_production
from tao_dagster.pipeline.scores import candidate_rewards, score_missing, score_partitions
from tao_dagster.pipeline.tuning import training_data, tune
from tao_dagster.policies import Policy, PolicySettings, current_policy
from tao_dagster.storage import ArtifactStore
from tao_dagster.tracking import Tracking
from tao_dagster.training import TrainSettings
from tao_dagster.warehouse import Warehouse

from .conftest import BANKING
from .support.traces import STARTED, TOOLS, gateway_log, jsonl

QUERIES = [line for line in (BANKING / "logs" / "2026-11-02.csv").read_text().splitlines()[1:41]]
# What production answered: the domain's JSON for some, prose for others (the regex scorer prefers the JSON).
REPLIES = ['{"topic": "card"}' if i % 2 else "Please contact support." for i in range(len(QUERIES))]


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


def write_gateway_log(path, count: int = len(QUERIES)) -> None:
    conversations = [[{"role": "user", "content": q}] for q in QUERIES[:count]]
    path.write_text(jsonl(gateway_log(conversations, replies=REPLIES[:count])))


def test_a_reply_is_stored_with_its_call_and_becomes_a_scored_candidate_no_round_trains_on(tokenizer, tmp_path, learnable_domain_file):
    db = Warehouse(tmp_path / "wh.duckdb")
    domain = DomainSettings(domain_file=str(learnable_domain_file), heldout_fraction=0.0)
    write_gateway_log(tmp_path / "gateway.jsonl", 6)
    counts = ingest_partition(db, "gateway.jsonl", tmp_path / "gateway.jsonl", domain, WindowCheck(domain.load(), tokenizer, 1024))
    assert (counts["log_format"], counts["accepted"], counts["with_reply"]) == ("chat_completions", 6, 6)
    sources = db.query("select request_id, requested_at, model, reply from prompt_sources order by line").rows()
    assert sources[1] == ("req-1", STARTED.replace(second=1), "gpt-4o-mini-2024-07-18", '{"topic": "card"}')

    assert production_candidates(db, ["gateway.jsonl"]) == 6
    assert production_candidates(db, ["gateway.jsonl"]) == 6  # a rerun stores nothing twice
    stored = db.candidates(["gateway.jsonl"])
    assert stored.height == 6 and set(stored["policy_version"]) == {f"{PRODUCTION}:gpt-4o-mini-2024-07-18"}

    # The parent's own candidates beside them: one good, one bad answer per prompt.
    parent = Policy("base:tiny", "unused")
    own = [
        {"candidate_id": f"{pid}-{k}", "prompt_id": pid, "partition": "gateway.jsonl", "policy_version": parent.version}
        | {"strategy": "plain", "sampling": "t=1", "sample_index": k, "response": answer, "completion_tokens": 3}
        for pid in stored["prompt_id"]
        for k, answer in enumerate(['{"topic": "card"}', "no"])
    ]
    db.upsert("candidates", pl.DataFrame(own))
    spec = domain.load()
    score_missing(db, spec.build_scorers(), ["gateway.jsonl"])
    rewards = candidate_rewards(db, spec.build_scorers())
    production = rewards.filter(pl.col("strategy") == PRODUCTION).sort("prompt_id")
    assert production.height == 6 and sorted(production["reward"]) == [0.0] * 3 + [1.0] * 3  # scored like the others

    data = training_data(db, spec, parent, TrainSettings(min_chosen_reward=0.0, min_margin=0.0))
    assert data.pairs.height == 6 and data.stale == 0  # production's replies are neither trained on nor stale
    assert not (set(data.pairs["chosen_id"]) | set(data.pairs["rejected_id"])) & set(production["candidate_id"])

    # The log changes: a reply that is new replaces the prompt's production candidate, and only it.
    edited = [json.loads(line) for line in (tmp_path / "gateway.jsonl").read_text().splitlines()]
    edited[0]["response"]["choices"][0]["message"]["content"] = "A new answer."
    (tmp_path / "gateway.jsonl").write_text(jsonl(edited))
    ingest_partition(db, "gateway.jsonl", tmp_path / "gateway.jsonl", domain, WindowCheck(domain.load(), tokenizer, 1024))
    production_candidates(db, ["gateway.jsonl"])
    replies = db.query("select response from candidates where strategy = 'production' order by response")["response"].to_list()
    assert len(replies) == 6 and "A new answer." in replies and "Please contact support." in replies


def test_the_tuned_model_is_compared_with_production_where_a_reply_was_logged(tokenizer, tmp_path, learnable_domain_file):
    db = Warehouse(tmp_path / "wh.duckdb")
    domain = DomainSettings(domain_file=str(learnable_domain_file), heldout_fraction=1.0)
    write_gateway_log(tmp_path / "gateway.jsonl", 6)
    (tmp_path / "plain.jsonl").write_text(jsonl([{"prompt": q} for q in QUERIES[6:10]]))  # no replies logged
    ingest_partition(db, "gateway.jsonl", tmp_path / "gateway.jsonl", domain, WindowCheck(domain.load(), tokenizer, 1024))
    ingest_partition(db, "plain.jsonl", tmp_path / "plain.jsonl", domain, WindowCheck(domain.load(), tokenizer, 1024))
    logged = db.production_replies(db.heldout_prompts()["prompt_id"].to_list())["prompt_id"].to_list()
    # The tuned model answers in the domain's JSON where production has a reply, in prose elsewhere.
    answered = db.heldout_prompts().sort("prompt_id").select("prompt_id", "text", completion_tokens=pl.lit(5))
    answered = answered.with_columns(
        response=pl.when(pl.col("prompt_id").is_in(logged)).then(pl.lit('{"topic": "card"}')).otherwise(pl.lit("Hm."))
    )
    scorers = pointwise_scorers(domain.load().build_scorers())
    versus = versus_production(db, answered, answer_rewards(answered, scorers), scorers)
    assert versus["n"] == 6 and versus["production_models"] == ["gpt-4o-mini-2024-07-18"]
    assert (versus["production_mean_reward"], versus["tuned_mean_reward"], versus["win_rate"]) == (0.5, 1.0, 0.75)
    unanswered = answered.join(db.production_replies(answered["prompt_id"].to_list()), on="prompt_id", how="anti")
    assert unanswered.height == 4 and versus_production(db, unanswered, answer_rewards(unanswered, scorers), scorers) is None


@pytest.mark.slow
def test_a_round_on_a_gateway_log_with_tools(tokenizer, tmp_path, monkeypatch, tiny_model_dir, learnable_domain_file):
    """Ingest, generate, score, train and report on a chat-completions log whose calls offered a tool and whose
    conversations hold a tool turn: the tools reach the chat template and TRL, production's replies are candidates,
    the pairs are the policy's own, and the report compares the tuned model with production."""
    monkeypatch.setenv("TAO_HOME", str(tmp_path / "home"))
    db = Warehouse(tmp_path / "home" / "warehouse.duckdb")
    domain = DomainSettings(domain_file=str(learnable_domain_file))
    policy = PolicySettings(base_model=str(tiny_model_dir), cache_dir=str(tmp_path / "cache"), engine="transformers")
    tracking = Tracking(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}", registered_model="tao-banking")
    call = {"id": "call_1", "type": "function", "function": {"name": "card_status", "arguments": "{}"}}
    conversations = [
        [
            {"role": "user", "content": q},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        ]
        for q in QUERIES
    ]
    (tmp_path / "gateway.jsonl").write_text(jsonl(gateway_log(conversations, tools=TOOLS, replies=REPLIES)))

    ingest_partition(db, "gateway.jsonl", tmp_path / "gateway.jsonl", domain, WindowCheck(domain.load(), tokenizer, 1024))
    summary = generate_candidates(db, domain, policy, current_policy(db, policy, tracking), ["gateway.jsonl"])
    assert summary["production_candidates"] == db.training_prompts(["gateway.jsonl"]).height > 0
    score_partitions(db, domain, ["gateway.jsonl"])
    settings = TrainSettings(batch_size=4, min_chosen_reward=0.0, min_margin=0.0, max_pairs=0, min_steps=0)
    tuned, trained = tune(db, domain, policy, tracking, ArtifactStore(), settings)
    assert trained["stale_candidates_left_out"] == 0 and trained["steps"] >= 1
    report, _, files = evaluate(db, domain, policy, tracking, ArtifactStore(), tuned)
    with_reply = db.production_replies(db.heldout_prompts("test")["prompt_id"].to_list()).height
    assert report["vs_production"]["n"] == with_reply > 0
    assert "Against production's own replies (gpt-4o-mini-2024-07-18)" in files["markdown"]


def test_a_warehouse_from_before_the_trace_columns_gains_them(tmp_path):
    import duckdb

    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "create table prompts (prompt_id varchar primary key, messages varchar, text varchar, heldout boolean, "
            "first_partition varchar, created_at timestamp default current_timestamp)"
        )
        con.execute(
            "create table prompt_sources (partition varchar, source_file varchar, line integer, prompt_id varchar, "
            "duplicate boolean, primary key (partition, line))"
        )
        con.execute("insert into prompts (prompt_id, messages, text, heldout, first_partition) values ('p1', '[]', 'hi', false, 'a.csv')")
    db = Warehouse(path)
    assert db.query("select prompt_id, tools from prompts").rows() == [("p1", None)]
    assert {"request_id", "requested_at", "model", "reply"} <= set(db.query("select * from prompt_sources").columns)
