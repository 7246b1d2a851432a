"""The whole graph with the real embedded model (vLLM where installed), at tiny sizes."""

import json
import math
import shutil
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml

from tao_dagster.defs.checkpoint.gate import promotion_gate
from tao_dagster.defs.flywheel.jobs import prompt_assets, round_assets
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.resources import default_resources
from tao_dagster.paths import PROJECT_ROOT

from .conftest import MODEL_CACHE

pytestmark = pytest.mark.e2e
DEMO = PROJECT_ROOT / "assets" / "banking"


def engine_processes() -> list[psutil.Process]:
    """Live vLLM engine processes under this one (exited ones not yet reaped do not count)."""
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "EngineCore" in p.name() + " ".join(p.cmdline()):
                alive.append(p)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture
def tiny_demo(tmp_path, monkeypatch):
    """The banking domain with two strategies, short answers and two 12-prompt log files."""
    spec = yaml.safe_load((DEMO / "domain.yaml").read_text())
    spec["max_tokens"] = 32
    spec["strategies"] = [s for s in spec["strategies"] if s["name"] in ("plain", "json_prefix")]
    spec["evaluation"]["labels"] = str(DEMO / "eval" / "labels.csv")
    spec["evaluation"]["label_map"] = str(DEMO / "eval" / "intent_topics.json")
    (tmp_path / "domain.yaml").write_text(yaml.safe_dump(spec))
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = (DEMO / "logs" / "2026-11-02.csv").read_text().splitlines()
    (logs / "day 1.csv").write_text("\n".join(lines[:13]) + "\n")
    (logs / "day2.csv").write_text("\n".join([lines[0], *lines[13:25], lines[1]]) + "\n")  # last row repeats day 1
    monkeypatch.setenv("TAO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TAO_DTYPE", "float32")  # the precision of CPUs without fast bf16, whatever this one has
    overrides = {
        "domain": {"domain_file": str(tmp_path / "domain.yaml"), "heldout_fraction": 0.35, "max_eval_prompts": 6},
        "logs": {"location": str(logs)},
        "policy": {"cache_dir": str(MODEL_CACHE)},
    }
    return default_resources(tmp_path / "home", overrides)


def test_all_five_assets_materialize_with_the_real_model(tiny_demo, tmp_path):
    with dg.instance_for_test() as instance:
        keys = sorted(tiny_demo["logs"].get().list_files())  # "day 1.csv" gets a sanitised key
        instance.add_dynamic_partitions(log_files.name, keys)
        tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[1]}
        result = dg.materialize(prompt_assets, instance=instance, resources=tiny_demo, tags=tags)
        assert result.success
        assert not engine_processes(), "the vLLM engine outlived its step"
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # vLLM's in-process worker replaced this with a no-op; closing the engine restores it
        assert torch.get_num_threads() == 1
        torch.set_num_threads(threads)
        ingest = result.asset_materializations_for_node("raw_prompts")[0].metadata
        assert ingest["rows_read"].value == 25 and ingest["duplicates"].value == 1 and ingest["quarantined"].value == 0

        db = tiny_demo["warehouse"].get()
        train = db.query("select count(*) as n from prompts where not heldout")["n"][0]
        heldout = db.query("select count(*) as n from prompts where heldout")["n"][0]
        assert train + heldout == 24 and heldout > 0
        candidates = db.query("select * from candidates")
        assert candidates.height == train * 3  # plain x1 + json_prefix x2
        assert set(candidates["strategy"]) == {"plain", "json_prefix"}
        assert set(candidates["engine"]) == {"vllm"}  # not a silent fallback to transformers
        assert result.asset_materializations_for_node("candidate_responses")[0].metadata["precision"].value == "float32"
        assert candidates["completion_tokens"].min() > 0 and set(candidates["finish_reason"]) <= {"stop", "length"}
        assert db.query("select count(*) as n from scores")["n"][0] == candidates.height * 4
        held_ids = set(db.query("select prompt_id from prompts where heldout")["prompt_id"])
        assert not held_ids & set(candidates["prompt_id"]), "held-out prompts must never get candidates"

        # Rematerializing generates nothing new.
        again = dg.materialize(prompt_assets[1:2], instance=instance, resources=tiny_demo, tags=tags)
        assert again.asset_materializations_for_node("candidate_responses")[0].metadata["candidates_generated"].value == 0

        run_config = {
            "ops": {
                "tuned_checkpoint": {
                    "config": {"batch_size": 4, "min_chosen_reward": 0.0, "min_margin": 0.0, "max_pairs": 8, "min_steps": 0}
                }
            }
        }
        result = dg.materialize(round_assets, instance=instance, resources=tiny_demo, run_config=run_config, raise_on_error=False)
        assert result.success
        assert not engine_processes()
        ckpt = result.asset_materializations_for_node("tuned_checkpoint")[0].metadata
        sft_steps = 2 * math.ceil(ckpt["targets"].value / 4)  # the default sft+dpo: 2 SFT epochs at 4 a step, then 8 pairs
        assert ckpt["algorithm"].value == "sft+dpo" and ckpt["steps"].value == sft_steps + 2
        assert (tmp_path / "home" / "checkpoints" / ckpt["checkpoint_id"].value / "model.safetensors").is_file()

        assert ckpt["precision"].value == "float32"
        saved = json.loads((tmp_path / "home" / "checkpoints" / ckpt["checkpoint_id"].value / "config.json").read_text())
        assert saved["dtype"] == "float32"  # as trained, for the next round to load

        report_meta = result.asset_materializations_for_node("eval_report")[0].metadata
        report = json.loads(Path(report_meta["report_json"].value).read_text())
        for key in (
            "base_mean_reward",
            "tuned_mean_reward",
            "diff",
            "diff_ci_low",
            "diff_ci_high",
            "win_rate",
            "n",
            "best_of_n_mean_reward",
        ):
            assert key in report
        tested = db.heldout_prompts("test").height  # the report reads the test part of the held-out slice alone
        assert 0 < report["n"] == min(6, tested) == report["outside_check"]["n_labelled"]
        assert "distillation_ratio" in report and "reward_choice_accuracy" in report["outside_check"]
        assert "data:image/png;base64," in report_meta["report"].value
        assert {c.check_name for c in result.get_asset_check_evaluations()} == {
            "tuned_beats_base",
            "outside_check_beats_majority",
            "serving_cost_not_higher",
            "no_reward_hacking_alarms",
            "reports_a_promoted_checkpoint",
        }
        # This round ran without the gate: the report says plainly that its checkpoint does not serve.
        assert (report["promoted"], report["promotion_gate"], report["champion"]) == (False, "not run", tiny_demo["policy"].base_version())
        assert "**Not promoted**: the promotion gate has not run" in Path(report_meta["report_md"].value).read_text()

        import mlflow

        mlflow.set_tracking_uri(tiny_demo["mlflow"].tracking_uri)
        versions = mlflow.MlflowClient().search_model_versions(f"name = '{tiny_demo['mlflow'].registered_model}'")
        assert len(versions) == 1
        run = mlflow.get_run(ckpt["mlflow_run_id"].value)
        assert run.data.params["pairs"] == "8" and "eval_diff" in run.data.metrics
        assert run.data.params["precision"] == "float32" and run.data.params["precision_reason"] == "TAO_DTYPE=float32"

        # The promotion gate on its own (two steps of training may or may not be enough): its decision follows
        # the CI, is recorded in MLflow, and the alias moves only when it passes.
        gate_run = dg.materialize(
            [*round_assets, promotion_gate],
            instance=instance,
            resources=tiny_demo,
            selection=dg.AssetSelection.checks(promotion_gate),
            raise_on_error=False,
        )
        (gate,) = gate_run.get_asset_check_evaluations()
        assert gate.passed == (gate.metadata["diff_vs_base_ci_low"].value > 0)
        (version,) = mlflow.MlflowClient().search_model_versions(f"name = '{tiny_demo['mlflow'].registered_model}'")
        assert version.tags["promotion_gate"] == ("passed" if gate.passed else "failed")
        assert (tiny_demo["mlflow"].champion_run_id() == run.info.run_id) == gate.passed
        assert not engine_processes()
    shutil.rmtree(tmp_path / "home" / "mlflow", ignore_errors=True)
