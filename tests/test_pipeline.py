"""A whole round from a notebook: the core's stage functions, without Dagster."""

import json

import pytest
import yaml

from tao_dagster.domain import DomainSettings
from tao_dagster.pipeline.round import run_round
from tao_dagster.policies import PolicySettings, current_version
from tao_dagster.tracking import Tracking
from tao_dagster.training import TrainSettings
from tao_dagster.warehouse import Warehouse

from .conftest import BANKING, learnable_domain, write_demo_log


@pytest.mark.slow
def test_a_round_runs_from_plain_python(tmp_path, monkeypatch, tiny_model_dir, learnable_domain_file):
    monkeypatch.setenv("TAO_HOME", str(tmp_path / "home"))
    write_demo_log(tmp_path / "day1.csv", 0, 40)
    db = Warehouse(tmp_path / "home" / "warehouse.duckdb")
    domain = DomainSettings(domain_file=str(learnable_domain_file))
    policy = PolicySettings(base_model=str(tiny_model_dir), cache_dir=str(tmp_path / "cache"), engine="transformers")
    tracking = Tracking(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}", registered_model="tao-banking")
    settings = TrainSettings(batch_size=4, min_chosen_reward=0.0, min_margin=0.0, max_pairs=0, min_steps=0)

    result = run_round(db, domain, policy, tracking, [tmp_path / "day1.csv"], settings)

    assert db.query("select count(*) as n from prompts")["n"][0] == 40
    (checkpoint,) = db.query("select checkpoint_id, metrics from checkpoints").rows()
    assert json.loads(checkpoint[1])["steps"] >= 1
    if result["promoted"]:  # the report of the new champion, which now generates the next round's candidates
        assert result["checkpoint_id"] == checkpoint[0] and result["n"] == db.heldout_prompts("test").height
        assert current_version(db, policy, tracking) == f"ckpt:{checkpoint[0]}"
    else:
        assert result["decision"].startswith("not promoted") and current_version(db, policy, tracking).startswith("base:")


def one_round(home, log, model, domain_file) -> Warehouse:
    db = Warehouse(home / "warehouse.duckdb")
    policy = PolicySettings(base_model=str(model), cache_dir=str(home / "cache"), engine="transformers")
    tracking = Tracking(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", registered_model="tao-banking")
    settings = TrainSettings(batch_size=4, min_chosen_reward=0.0, min_margin=0.0, max_pairs=0, min_steps=0)
    run_round(db, DomainSettings(domain_file=str(domain_file)), policy, tracking, [log], settings)
    return db


@pytest.mark.slow
def test_labels_reach_evaluation_alone(tmp_path, monkeypatch, tiny_model_dir, learnable_domain_file):
    """The same round with the domain's labels and without: the same candidates, scores and checkpoint."""
    labelled = yaml.safe_load(learnable_domain_file.read_text())
    labelled["evaluation"] = {
        "answer_field": "topic",
        "labels": str(BANKING / "eval" / "labels.csv"),
        "label_column": "category",
        "label_map": str(BANKING / "eval" / "intent_topics.json"),
    }
    labelled_file = tmp_path / "labelled.yaml"
    labelled_file.write_text(yaml.safe_dump(labelled))
    write_demo_log(tmp_path / "day1.csv", 0, 40)
    # One precision for both runs: each home would probe bf16 anew, and a probe on a loaded machine may choose otherwise.
    monkeypatch.setenv("TAO_DTYPE", "float32")
    stored = []
    for name, domain_file in (("unlabelled", learnable_domain_file), ("labelled", labelled_file)):
        monkeypatch.setenv("TAO_HOME", str(tmp_path / name))
        db = one_round(tmp_path / name, tmp_path / "day1.csv", tiny_model_dir, domain_file)
        stored.append(
            [
                db.query("select candidate_id, response from candidates order by candidate_id"),
                db.query("select candidate_id, scorer, scorer_version, score from scores order by all"),
                db.query("select checkpoint_id, data_hash from checkpoints"),
            ]
        )
    reports = list((tmp_path / "labelled" / "reports").glob("*/report.json"))
    if reports:  # promoted: the labelled report has its outside check, from the labels
        assert "outside_check" in json.loads(reports[0].read_text())
    for without, with_labels in zip(*stored):
        assert without.height and without.equals(with_labels)


@pytest.mark.slow
@pytest.mark.parametrize("demo", ["banking", "hwu64"])
@pytest.mark.parametrize("algorithm", ["sft", "dpo", "sft+dpo", "grpo"])
def test_every_algorithm_trains_gates_and_reports(tmp_path, monkeypatch, tiny_model_dir, algorithm, demo):
    """Each algorithm, at tiny sizes, through the same round on each demo domain: its checkpoint is recorded with its
    algorithm and data, and the gate decides on it (the report follows a promotion)."""
    monkeypatch.setenv("TAO_HOME", str(tmp_path / "home"))
    learnable_domain_file = learnable_domain(tmp_path, demo)
    write_demo_log(tmp_path / "day1.csv", 0, 24, demo)
    db = Warehouse(tmp_path / "home" / "warehouse.duckdb")
    policy = PolicySettings(base_model=str(tiny_model_dir), cache_dir=str(tmp_path / "cache"), engine="transformers")
    tracking = Tracking(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}", registered_model=f"tao-{demo}")
    small = dict(batch_size=4, min_margin=0.0, min_chosen_z=0.0, max_pairs=0, min_steps=0, sft_epochs=1)
    settings = TrainSettings(algorithm=algorithm, grpo_steps=2, grpo_max_completion_length=8, **small)

    result = run_round(db, DomainSettings(domain_file=str(learnable_domain_file)), policy, tracking, [tmp_path / "day1.csv"], settings)

    (row,) = db.query("select checkpoint_id, algorithm, metrics from checkpoints").rows()
    metrics = json.loads(row[2])
    assert row[1] == algorithm and metrics["steps"] >= 1
    expected = {"targets": "sft" in algorithm, "pairs": "dpo" in algorithm, "prompts": algorithm == "grpo"}
    assert {k: metrics[k] > 0 for k in expected} == expected, "what was trained on"
    if result["promoted"]:
        assert result["checkpoint_id"] == row[0] and "diff" in result
    else:
        assert result["decision"].startswith("not promoted")
    client = tracking.client()
    experiment = client.get_experiment_by_name(tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id], f"tags.mlflow.runName = '{algorithm}-{row[0]}'")
    assert run.data.params["algorithm"] == algorithm and "train_loss" in run.data.metrics
    assert {k: int(run.data.params[k]) > 0 for k in expected} == expected, "what the checkpoint's data holds"
