"""A whole round from a notebook: the core's stage functions, without Dagster."""

import json

import pytest

from tao_dagster.domain import DomainSettings
from tao_dagster.pipeline.round import run_round
from tao_dagster.policies import PolicySettings, current_version
from tao_dagster.tracking import Tracking
from tao_dagster.training import TrainSettings
from tao_dagster.warehouse import Warehouse

from .conftest import write_banking_log


@pytest.mark.slow
def test_a_round_runs_from_plain_python(tmp_path, monkeypatch, tiny_model_dir, learnable_domain_file):
    monkeypatch.setenv("TAO_HOME", str(tmp_path / "home"))
    write_banking_log(tmp_path / "day1.csv", 0, 40)
    db = Warehouse(tmp_path / "home" / "warehouse.duckdb")
    domain = DomainSettings(domain_file=str(learnable_domain_file))
    policy = PolicySettings(base_model=str(tiny_model_dir), cache_dir=str(tmp_path / "cache"), engine="transformers")
    tracking = Tracking(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    settings = TrainSettings(batch_size=4, min_chosen_reward=0.0, min_margin=0.0, max_pairs=0)

    result = run_round(db, domain, policy, tracking, [tmp_path / "day1.csv"], settings)

    assert db.query("select count(*) as n from prompts")["n"][0] == 40
    (checkpoint,) = db.query("select checkpoint_id, metrics from checkpoints").rows()
    assert json.loads(checkpoint[1])["steps"] >= 1
    if result["promoted"]:  # the report of the new champion, which now generates the next round's candidates
        assert result["checkpoint_id"] == checkpoint[0] and result["n"] == db.heldout_prompts().height
        assert current_version(db, policy, tracking) == f"ckpt:{checkpoint[0]}"
    else:
        assert result["decision"].startswith("not promoted") and current_version(db, policy, tracking).startswith("base:")
