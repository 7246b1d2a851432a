"""The flywheel with the tiny random model: sensor -> scored partition -> round -> promotion gate, twice."""

import json
from pathlib import Path

import dagster as dg
import pytest

from tao_dagster.defs.flywheel.jobs import prompt_assets
from tao_dagster.defs.flywheel.schedules import flywheel_round
from tao_dagster.defs.report.assets import eval_report
from tao_dagster.defs.resources import MlflowResource
from tao_dagster.policies import champion_policy

from .conftest import gate_of, run_round, sensor_tick, tiny_resources, write_demo_log

PLANTED_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTED7Q2X9Z",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-5f1c9e",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password-83d2",
    "OPENAI_API_KEY": "sk-planted-judge-key-0b7a",
}


@pytest.fixture
def tiny_flywheel(tmp_path, tiny_model_dir, learnable_domain_file, monkeypatch):
    """The resources of a fresh project home with the tiny model and a domain it can learn; credentials
    are planted in the environment, as a deployment would set them, to check that none leaks."""
    monkeypatch.setenv("TAO_HOME", str(tmp_path / "home"))
    for name, value in PLANTED_SECRETS.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "logs").mkdir()
    return tiny_resources(tmp_path / "home", tmp_path / "logs", tiny_model_dir, learnable_domain_file)


def round_trigger(instance, resources):
    """One evaluation of the flywheel schedule."""
    with dg.build_schedule_context(instance=instance, resources=resources) as context:
        return flywheel_round(context)


@pytest.mark.slow
def test_two_rounds_build_on_the_champion_and_the_gate_refuses_a_worse_checkpoint(tiny_flywheel, tmp_path):
    resources = tiny_flywheel
    logs = resources["logs"]
    db = resources["warehouse"].get()
    with dg.instance_for_test() as instance:
        write_demo_log(tmp_path / "logs" / "day1.csv", 0, 30)
        first = sensor_tick(instance, logs, None)
        assert [r.partition_key for r in first.run_requests] == ["day1.csv"]
        assert dg.materialize(prompt_assets, instance=instance, resources=resources, partition_key="day1.csv").success
        base_version = resources["policy"].base_version()
        day1 = db.query("select count(*) as n from prompts where not heldout")["n"][0]
        assert db.query("select distinct policy_version from candidates")["policy_version"].to_list() == [base_version]

        # Enough new prompts, but a round waits while any run is queued or in progress.
        busy = instance.add_run(dg.DagsterRun(job_name="score_partitions", status=dg.DagsterRunStatus.STARTED))
        waiting = round_trigger(instance, resources)
        assert isinstance(waiting, dg.SkipReason) and busy.run_id in waiting.skip_message
        instance.delete_run(busy.run_id)
        request = round_trigger(instance, resources)
        assert isinstance(request, dg.RunRequest) and request.tags["tao/new_prompts"] == str(day1)

        # Round 1: strong SFT on the chosen answers teaches the tiny model to open the JSON object.
        round1 = run_round(instance, resources, learning_rate=3e-3, epochs=8, sft_weight=2.0, lora_r=32, lora_alpha=64)
        gate = gate_of(round1)
        assert gate.passed, gate.metadata["reason"].value
        assert gate.metadata["diff_vs_base_ci_low"].value > 0 and "diff_vs_champion" not in gate.metadata
        assert round1.success and round1.asset_materializations_for_node("eval_report")
        ckpt1 = round1.asset_materializations_for_node("tuned_checkpoint")[0].metadata["checkpoint_id"].value
        assert champion_policy(db, resources["mlflow"]).checkpoint_id == ckpt1
        assert round1.asset_materializations_for_node("eval_report")[0].metadata["promoted"].value is True

        # Nothing new since the checkpoint: the schedule skips.
        assert isinstance(round_trigger(instance, resources), dg.SkipReason)

        # Day 2 arrives: only its prompts get candidates, from the champion.
        write_demo_log(tmp_path / "logs" / "day2.csv", 30, 30)
        second = sensor_tick(instance, logs, first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["day2.csv"]
        before = db.query("select count(*) as n from candidates")["n"][0]
        scored = dg.materialize(prompt_assets, instance=instance, resources=resources, partition_key="day2.csv")
        new = db.query("select partition, policy_version, count(*) as n from candidates group by all order by all").rows()
        assert new == [("day1.csv", base_version, before), ("day2.csv", f"ckpt:{ckpt1}", new[1][2])]
        assert scored.asset_materializations_for_node("candidate_responses")[0].metadata["candidates_generated"].value == new[1][2]
        gold = scored.asset_materializations_for_node("reward_scores")[0].metadata["gold_agreement"].value
        assert gold["gold_items"] == 2 and set(gold["fitted_weights"]) == {"starts_json"}
        assert isinstance(round_trigger(instance, resources), dg.RunRequest)

        # Round 2 starts from the champion; a destructive learning rate makes it worse, and the gate says so.
        round2 = run_round(instance, resources, learning_rate=0.5, epochs=2)
        meta = round2.asset_materializations_for_node("tuned_checkpoint")[0].metadata
        assert meta["parent"].value == f"ckpt:{ckpt1}" and meta["stale_candidates_left_out"].value == before
        gate = gate_of(round2)
        assert not gate.passed and "does not beat the champion" in gate.metadata["reason"].value
        assert gate.metadata["decision"].value == f"not promoted: ckpt:{ckpt1} stays champion"
        assert not round2.asset_materializations_for_node("eval_report"), "a refused checkpoint is not reported as the new model"
        assert champion_policy(db, resources["mlflow"]).checkpoint_id == ckpt1
        # eval_report on its own reports the latest checkpoint, the refused one, and says plainly that it does not serve.
        alone = dg.materialize([eval_report], instance=instance, resources=resources).asset_materializations_for_node("eval_report")
        report = json.loads(Path(alone[0].metadata["report_json"].value).read_text())
        assert (report["checkpoint_id"], report["promoted"], report["promotion_gate"]) == (meta["checkpoint_id"].value, False, "failed")
        assert f"the promotion gate failed for this checkpoint and the champion is ckpt:{ckpt1}" in alone[0].metadata["report"].value

        versions = resources["mlflow"].client().search_model_versions(f"name = '{resources['mlflow'].registered_model}'")
        assert sorted(v.tags.get("promotion_gate") for v in versions) == ["failed", "passed"]

        assert_no_planted_secret(instance, resources["mlflow"], tmp_path / "home")


def assert_no_planted_secret(instance: dg.DagsterInstance, mlflow: MlflowResource, home) -> None:
    """None of the credentials planted in the environment appears in Dagster's event logs, run records and
    asset metadata, in MLflow's params, tags and model versions, or in any file under the project home
    (warehouse, reports, checkpoints, MLflow store and artifacts)."""
    haystacks = [repr(run) for run in instance.get_runs()]
    haystacks += [repr(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
    client = mlflow.client()
    for run in client.search_runs([client.get_experiment_by_name(mlflow.experiment).experiment_id]):
        haystacks.append(repr((run.data.params, run.data.tags, run.data.metrics)))
    haystacks += [repr(v) for v in client.search_model_versions(f"name = '{mlflow.registered_model}'")]
    haystacks += [path.read_bytes().decode("latin-1") for path in home.rglob("*") if path.is_file()]
    assert len(haystacks) > 20 and any("promotion_gate" in h for h in haystacks)  # the scan sees real records
    for name, value in PLANTED_SECRETS.items():
        assert not [h[:200] for h in haystacks if value in h], f"{name} leaked"
