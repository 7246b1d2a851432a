"""Crash and resume for real: a subprocess generates, trains or writes the warehouse, the test kills it with
SIGKILL, and the rerun continues from what was stored. Retries happen for transient failures only."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tao_dagster.defs.candidates.assets import candidate_responses
from tao_dagster.defs.checkpoint.assets import tuned_checkpoint
from tao_dagster.defs.prompts.assets import raw_prompts
from tao_dagster.defs.scores.assets import reward_scores
from tao_dagster.defs.steps import TRANSIENT_RETRY
from tao_dagster.generation import open_engine
from tao_dagster.paths import PROJECT_ROOT
from tao_dagster.pipeline import candidates
from tao_dagster.policies import champion_checkpoint
from tao_dagster.training import last_saved_checkpoint, train_stage
from tao_dagster.warehouse import Warehouse

from .support.crash_worker import PARTITION, TRAIN_SETTINGS, TUNE_CONFIG, frame, materialize, pipeline_resources, training_pairs

# Three candidates per prompt; a tiny random model seldom stops early, so each takes its 32 tokens.
DOMAIN = """
name: crash
instruction: Answer with one line of JSON.
plain_template: "{instruction}\\nMessage: {prompt}"
max_tokens: 32
strategies:
  - {name: plain, temperature: 0.7, samples: 2}
  - {name: json_prefix, response_prefix: '{"topic": "', temperature: 0.8}
scorers:
  - {name: starts_json, kind: regex, pattern: '^\\{'}
"""
CANDIDATES_PER_PROMPT = 3
CANDIDATE_COLUMNS = "candidate_id, prompt_id, strategy, sampling, sample_index, response"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model's operations are too small to share between threads, and on a busy machine two threads
    stall each other (generation ran 5 to 8 times slower here); the workers get one thread too."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def worker(tmp_path: Path, *args) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`python -m tests.support.crash_worker <args>` in a process group of its own, killed on every exit path."""
    log = tmp_path / f"{args[0]}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.crash_worker", *map(str, args)],
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,
        )
    try:
        yield proc, log
    finally:
        kill(proc)


def kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Poll until `condition()` holds; fail with the worker's log if it exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the worker {'exited' if proc.poll() is not None else 'timed out'} first:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def step_events(result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.event_type_value for e in result.all_events if e.is_step_event]


@pytest.fixture
def pipeline(tmp_path, tiny_model_dir):
    """40 banking queries ingested as one partition in a fresh project home."""
    domain = tmp_path / "domain.yaml"
    domain.write_text(DOMAIN)
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    lines = (PROJECT_ROOT / "assets" / "banking" / "logs" / "2026-11-02.csv").read_text().splitlines()
    (home / "logs" / PARTITION).write_text("\n".join(lines[:41]) + "\n")
    resources = pipeline_resources(home, str(tiny_model_dir), str(domain))
    assert materialize([raw_prompts], resources).success
    return home, domain, resources


@pytest.mark.slow
def test_killed_generation_resumes_with_only_the_missing_candidates(pipeline, tiny_model_dir, tmp_path):
    home, domain, resources = pipeline
    db = resources["warehouse"].get()
    expected = db.query("select count(*) as n from prompts where not heldout")["n"][0] * CANDIDATES_PER_PROMPT

    def stored() -> int:
        return db.query("select count(*) as n from candidates")["n"][0]

    with worker(tmp_path, "generate", home, tiny_model_dir, domain, 4) as (proc, log):  # chunks of 4 candidates
        wait_for(lambda: stored() > 0, proc, log)
        kill(proc)
    before = db.query(f"select {CANDIDATE_COLUMNS} from candidates order by candidate_id")
    assert 0 < before.height < expected, "the kill should land between the first and the last chunk"

    rerun = materialize([candidate_responses], resources)
    meta = rerun.asset_materializations_for_node("candidate_responses")[0].metadata
    after = db.query(f"select {CANDIDATE_COLUMNS} from candidates order by candidate_id")
    print(f"\ngeneration: {before.height} of {expected} stored at the kill, {meta['candidates_generated'].value} generated by the rerun")
    assert meta["candidates_generated"].value == expected - before.height
    assert meta["candidates_reused"].value == before.height
    assert after.height == expected and after.select("prompt_id", "strategy", "sampling", "sample_index").is_unique().all()
    assert after.filter(pl.col("candidate_id").is_in(before["candidate_id"])).equals(before), "stored candidates changed"


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    work, out = tmp_path / "work", tmp_path / "tuned"
    killed_at = killed_training(tmp_path, "train", tiny_model_dir, out, work, steps=12)
    (work / "checkpoint-11").mkdir(exist_ok=True)  # as if a kill had cut this save short: it has no trainer_state.json

    resumed = train_stage("dpo", str(tiny_model_dir), training_pairs(), TRAIN_SETTINGS, out, work)
    print(f"\ntraining: killed after step {killed_at}'s checkpoint; resumed from step {resumed['resumed_from_step']} to {resumed['steps']}")
    assert resumed["resumed_from_step"] == killed_at and resumed["steps"] == 12
    assert (out / "config.json").is_file()
    # The resumed run continues the same curve as a run never killed: same adapter, optimiser, data order and
    # reference log-probs (recomputed from the parent).
    uninterrupted = train_stage(
        "dpo", str(tiny_model_dir), training_pairs(), TRAIN_SETTINGS, tmp_path / "tuned-once", tmp_path / "work-once"
    )
    assert uninterrupted["resumed_from_step"] == 0
    assert resumed["loss_curve"] == pytest.approx(uninterrupted["loss_curve"], rel=1e-4)
    assert resumed["loss_curve"][-1] < resumed["loss_curve"][0]


def killed_training(tmp_path: Path, what: str, model_dir: Path, out: Path, work: Path, steps: int) -> int:
    """Train (`what`, a crash_worker training command) in a worker, kill it once it has saved a Trainer checkpoint,
    and return that checkpoint's step: between the first checkpoint and the last of `steps`."""
    with worker(tmp_path, what, model_dir, out, work) as (proc, log):
        wait_for(lambda: last_saved_checkpoint(work) is not None, proc, log)
        kill(proc)
    killed_at = int(last_saved_checkpoint(work).name.removeprefix("checkpoint-"))
    assert not out.exists() and 0 < killed_at < steps, "the kill should land between the first checkpoint and the end"
    return killed_at


@pytest.mark.slow
def test_a_round_killed_after_registering_its_checkpoint_keeps_one_model_version(pipeline, tiny_model_dir, tmp_path, monkeypatch):
    home, domain, resources = pipeline
    monkeypatch.setenv("TAO_HOME", str(home))
    assert materialize([candidate_responses, reward_scores], resources).success
    tracking, db = resources["mlflow"], resources["warehouse"].get()

    def versions() -> list:
        return tracking.client().search_model_versions(f"name = '{tracking.registered_model}'")

    with worker(tmp_path, "tune", home, tiny_model_dir, domain) as (proc, log):
        wait_for(lambda: "registered" in log.read_text(), proc, log, timeout=600)
        kill(proc)
    [registered] = versions()
    assert db.query("select count(*) as n from checkpoints")["n"][0] == 0, "killed before the warehouse recorded it"

    rerun = dg.materialize([tuned_checkpoint], resources=resources, run_config={"ops": {"tuned_checkpoint": {"config": TUNE_CONFIG}}})
    checkpoint_id = rerun.asset_materializations_for_node("tuned_checkpoint")[0].metadata["checkpoint_id"].value
    [version] = versions()
    assert (version.version, version.tags["checkpoint_id"]) == (registered.version, checkpoint_id), "no second version"
    row = db.checkpoint(checkpoint_id)
    assert (row["model_version"], row["mlflow_run_id"]) == (str(registered.version), registered.run_id)
    client = tracking.client()
    (run,) = client.search_runs([client.get_experiment_by_name(tracking.experiment).experiment_id])
    assert (run.info.run_id, run.info.status) == (registered.run_id, "FINISHED"), "the killed run was resumed, not left beside a second"
    tracking.promote(row["model_version"])
    assert champion_checkpoint(db, tracking) == checkpoint_id, "the champion alias leads back to the checkpoint"


@pytest.mark.parametrize(("kill_at", "mark"), [("inserting", "inserting batch 2"), ("inserted", "inserted")])
def test_killed_warehouse_transaction_leaves_none_of_its_rows(tmp_path, kill_at, mark):
    """Killed inside the insert statement (which is reading its rows, two batches of eight in, when the kill
    lands) or after it, with the commit to come."""
    path = tmp_path / "warehouse.duckdb"
    with worker(tmp_path, "write", path, 1000, 400_000, kill_at) as (proc, log):
        wait_for(lambda: f"\n{mark} " in "\n" + log.read_text().rpartition("\n")[0], proc, log)  # a whole line
        kill(proc)
    stages = [line.rsplit(" ", 1)[0] for line in log.read_text().splitlines() if line.startswith(("committed", "inserting", "inserted"))]
    assert stages == (["committed", "inserting batch 1", "inserting batch 2"] if kill_at == "inserting" else ["committed", "inserted"])
    if kill_at == "inserted":
        sizes = dict(line.rsplit(" ", 1) for line in log.read_text().splitlines() if line.startswith(("committed", "inserted")))
        assert int(sizes["inserted"]) > int(sizes["committed"]), "the uncommitted rows should have reached the file before the kill"

    db = Warehouse(path)  # opens and recovers the killed file
    assert db.query("select partition, count(*) as n from candidates group by all").rows() == [("committed", 1000)]
    db.upsert("candidates", frame("after", 10))
    assert db.query("select count(*) as n from candidates")["n"][0] == 1010


def test_a_transaction_that_raises_leaves_none_of_its_rows(tmp_path):
    db = Warehouse(tmp_path / "warehouse.duckdb")
    with pytest.raises(RuntimeError, match="disk on fire"), db.transaction() as con:
        db.insert(con, "candidates", frame("failed", 1000))
        raise RuntimeError("disk on fire")
    assert db.query("select count(*) as n from candidates")["n"][0] == 0


def test_deterministic_failures_are_not_retried(pipeline, monkeypatch):
    home, domain, resources = pipeline
    monkeypatch.setenv("TAO_HOME", str(home))
    assert tuned_checkpoint.op.retry_policy == TRANSIENT_RETRY == candidate_responses.op.retry_policy

    no_pairs = dg.materialize([tuned_checkpoint], resources=resources, raise_on_error=False)  # nothing generated yet
    domain.write_text("name: broken\n")
    bad_domain = materialize([candidate_responses], resources, raise_on_error=False)
    for result, reason in ((no_pairs, "no training pairs"), (bad_domain, "missing or malformed setting")):
        assert step_events(result).count("STEP_FAILURE") == 1 and "STEP_UP_FOR_RETRY" not in step_events(result)
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert reason in failure.step_failure_data.error.message


@pytest.mark.slow
def test_a_generation_engine_that_fails_to_start_once_is_retried(pipeline, monkeypatch):
    home, domain, resources = pipeline
    starts = []

    def engine_failing_once(*args):
        starts.append(args)
        if len(starts) == 1:
            raise RuntimeError("engine core failed to start")
        return open_engine(*args)

    monkeypatch.setattr(candidates, "open_engine", engine_failing_once)
    result = materialize([candidate_responses], resources)
    events = step_events(result)
    assert result.success and len(starts) == 2
    assert events.count("STEP_UP_FOR_RETRY") == 1 and events.count("STEP_RESTARTED") == 1 and "STEP_FAILURE" not in events
    stored = resources["warehouse"].get().query("select count(*) as n from candidates")["n"][0]
    assert stored == result.asset_materializations_for_node("candidate_responses")[0].metadata["candidates_generated"].value > 0
