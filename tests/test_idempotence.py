"""Side effects that a rerun, or a run killed half-way, must neither repeat nor leave half-done: report and
checkpoint files written atomically, one model version per checkpoint, one registered model per domain."""

import os
from types import SimpleNamespace

import mlflow as mlf
import polars as pl
import pytest

from tao_dagster import storage
from tao_dagster.defs.resources import default_resources
from tao_dagster.hardware import Precision
from tao_dagster.paths import PROJECT_ROOT
from tao_dagster.pipeline.report import promotion_status
from tao_dagster.policies import Policy, PolicySettings
from tao_dagster.storage import write_atomically
from tao_dagster.tracking import Tracking
from tao_dagster.training import trainer
from tao_dagster.warehouse import Warehouse


def test_a_crash_before_the_rename_leaves_the_old_file_whole(tmp_path, monkeypatch):
    report = write_atomically(tmp_path / "report.json", '{"old": true}')
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))

    def crash(*args):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(report, '{"new": "and much longer than the old content"}')
    assert report.read_text() == '{"old": true}'
    assert synced == [str(tmp_path / ".report.json.tmp")], "the new content is on disk before the rename"

    monkeypatch.undo()
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    write_atomically(report, b'{"new": true}')
    assert report.read_text() == '{"new": true}' and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert synced[1:] == [str(tmp_path / ".report.json.tmp"), str(tmp_path)], "then the folder, so the rename survives a crash"


def test_a_checkpoint_is_synced_before_it_replaces_the_old_one_and_a_killed_save_replaces_nothing(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    merged = SimpleNamespace(model=SimpleNamespace(merge_and_unload=lambda: model))
    out = tmp_path / "checkpoints" / "ckpt-1"
    out.mkdir(parents=True)
    (out / "config.json").write_text('{"old": true}')

    def killed_save(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving the tokenizer")

    monkeypatch.setattr(tokenizer, "save_pretrained", killed_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_merged(merged, tokenizer, out, Precision("float32", "test"))
    assert [p.name for p in out.iterdir()] == ["config.json"] and (out / "config.json").read_text() == '{"old": true}'

    monkeypatch.undo()
    synced = []
    fsync_tree = storage.fsync_tree
    monkeypatch.setattr(trainer, "fsync_tree", lambda folder: synced.append(sorted(p.name for p in folder.iterdir())) or fsync_tree(folder))
    trainer.save_merged(merged, tokenizer, out, Precision("float32", "test"))
    assert "model.safetensors" in synced[0] and "tokenizer.json" in synced[0], "weights and tokenizer synced before the rename"
    assert (out / "model.safetensors").is_file() and sorted(p.name for p in out.parent.iterdir()) == ["ckpt-1"]


def test_each_domain_registers_its_own_model_unless_one_is_named(tmp_path):
    for domain, name in (("banking", "tao-banking"), ("hwu64", "tao-hwu64")):
        resources = default_resources(tmp_path, {"domain": {"domain_file": str(PROJECT_ROOT / "assets" / domain / "domain.yaml")}})
        assert resources["mlflow"].registered_model == name
    named = default_resources(tmp_path, {"mlflow": {"registered_model": "support-bot"}})
    assert named["mlflow"].registered_model == "support-bot"


def test_a_checkpoint_registered_by_a_killed_run_keeps_its_version(tmp_path):
    tracking = Tracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", registered_model="tao-test")

    def logged_run() -> mlf.ActiveRun:
        with tracking.start_run(run_name="dpo-ckpt") as run:
            mlf.log_text("weights", "model/model.safetensors")
        return run

    first, rerun, other = logged_run(), logged_run(), logged_run()
    assert tracking.register(first, "ckpt-a") == ("1", first.info.run_id)
    assert tracking.register(rerun, "ckpt-a") == ("1", first.info.run_id), "the rerun reuses the version and its run"
    assert tracking.register(other, "ckpt-b") == ("2", other.info.run_id)
    versions = tracking.client().search_model_versions("name = 'tao-test'")
    assert sorted((int(v.version), v.tags["checkpoint_id"]) for v in versions) == [(1, "ckpt-a"), (2, "ckpt-b")]


def test_the_report_says_whether_its_checkpoint_was_promoted(tmp_path, tiny_model_dir):
    tracking = Tracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", registered_model="tao-test")
    db = Warehouse(tmp_path / "wh.duckdb")
    settings = PolicySettings(base_model=str(tiny_model_dir), cache_dir=str(tmp_path))
    policies = []
    for ckpt in ("ckpt-a", "ckpt-b"):
        with tracking.start_run(run_name=ckpt) as run:
            mlf.log_text("weights", "model/model.safetensors")
        version, run_id = tracking.register(run, ckpt)
        db.upsert("checkpoints", pl.DataFrame([{"checkpoint_id": ckpt, "mlflow_run_id": run_id, "model_version": version}]))
        policies.append(Policy(f"ckpt:{ckpt}", str(tmp_path), ckpt, version))
    a, b = policies
    base = f"base:{tiny_model_dir.name}"
    assert promotion_status(db, settings, tracking, a) == {"promoted": False, "promotion_gate": "not run", "champion": base}
    tracking.tag_version(a.model_version, {"promotion_gate": "passed"})
    tracking.promote(a.model_version)
    tracking.tag_version(b.model_version, {"promotion_gate": "failed"})
    assert promotion_status(db, settings, tracking, a) == {"promoted": True, "promotion_gate": "passed", "champion": "ckpt:ckpt-a"}
    assert promotion_status(db, settings, tracking, b) == {"promoted": False, "promotion_gate": "failed", "champion": "ckpt:ckpt-a"}
    tracking.promote(b.model_version)  # a human moves the alias: the champion is promoted, whatever its gate said
    assert promotion_status(db, settings, tracking, b)["promoted"] is True
