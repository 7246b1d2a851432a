"""The production profile's stores for real: an MLflow tracking server (`mlflow server` on 127.0.0.1) whose
artifacts live in S3 (moto), used through the project's MlflowResource as tuned_checkpoint uses it, and
checkpoints and reports published to S3 through ArtifactStoreResource (dagster-aws)."""

import time
from pathlib import Path

import mlflow as mlf
import pytest
from dagster_aws.s3 import S3Resource

from tao_dagster.defs.resources import ArtifactStoreResource, MlflowResource

from .support.servers import mlflow_server

pytestmark = pytest.mark.servers


def checkpoint_folder(path):
    """A stand-in for a merged checkpoint: a config and some weights in a sub-folder."""
    (path / "weights").mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "weights" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    return path


def test_mlflow_server_keeps_runs_and_registered_models_with_artifacts_in_s3(s3_endpoint, tmp_path, monkeypatch):
    s3 = S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1").get_client()
    s3.create_bucket(Bucket="mlflow")
    model = checkpoint_folder(tmp_path / "ckpt-1")
    with mlflow_server(s3_endpoint, "s3://mlflow/artifacts", tmp_path) as server:
        url = server.url
        # The client needs no S3 credentials: artifacts go through the server.
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(var)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # mlflow.set_tracking_uri exports it; undone after the test
        tracking = MlflowResource(tracking_uri=url, registered_model="tao-support")
        assert tracking.champion_run_id() is None
        with tracking.start_run(run_name="dpo-ckpt-1") as run:
            mlf.log_params({"beta": 0.1, "parent": "base:tiny"})
            mlf.log_metric("train_loss", 0.5, step=1)
            mlf.log_artifacts(str(model), artifact_path="model")
            version, registered_run = tracking.register(run, "ckpt-1")
        assert (version, registered_run) == ("1", run.info.run_id)
        tracking.promote(version)
        assert tracking.champion_run_id() == run.info.run_id

        with tracking.start_run(run_name="dpo-ckpt-2") as second:
            mlf.log_artifacts(str(model), artifact_path="model")
            assert tracking.register(second, "ckpt-2") == ("2", second.info.run_id), "the registered model is reused"
        with tracking.start_run(run_name="dpo-ckpt-1") as rerun:  # ckpt-1 again, after a kill before the warehouse recorded it
            assert tracking.register(rerun, "ckpt-1") == ("1", run.info.run_id), "its version is reused, not registered twice"
        assert tracking.champion_run_id() == run.info.run_id, "a new version is not the champion until promoted"

        client = tracking.client()
        stored = client.get_model_version_by_alias(tracking.registered_model, tracking.champion_alias)
        assert stored.source == f"{run.info.artifact_uri}/model" and run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert client.get_run(run.info.run_id).data.params == {"beta": "0.1", "parent": "base:tiny"}
        back = mlf.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model", dst_path=str(tmp_path / "back"))
        weights = "weights/model.safetensors"
        assert (Path(back) / weights).read_bytes() == (model / weights).read_bytes()

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="mlflow")["Contents"]}
    run_prefix = f"artifacts/{run.info.experiment_id}/{run.info.run_id}/artifacts/model"
    assert {f"{run_prefix}/config.json", f"{run_prefix}/weights/model.safetensors"} <= keys


def test_checkpoints_and_reports_are_published_to_s3_once(s3_endpoint, tmp_path):
    s3 = S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1")
    client = s3.get_client()
    client.create_bucket(Bucket="tao-artifacts")
    store = ArtifactStoreResource(location="s3://tao-artifacts/support/", s3=s3).get()
    folder = checkpoint_folder(tmp_path / "ckpt-abc")
    (folder / "weights" / "big.safetensors").write_bytes(bytes(range(256)) * 40_000)  # 10 MB: boto3 uploads it in parts

    def stored() -> dict[str, tuple]:
        listed = client.list_objects_v2(Bucket="tao-artifacts")["Contents"]
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed}

    assert store.publish(folder, "checkpoints") == "s3://tao-artifacts/support/checkpoints/ckpt-abc"
    first = stored()
    base = "support/checkpoints/ckpt-abc"
    config, weights, big = f"{base}/config.json", f"{base}/weights/model.safetensors", f"{base}/weights/big.safetensors"
    assert set(first) == {config, weights, big}
    assert first[big][0].strip('"').endswith("-2"), "a multipart ETag, which is not the MD5 of the content"
    assert client.get_object(Bucket="tao-artifacts", Key=weights)["Body"].read() == (folder / "weights" / "model.safetensors").read_bytes()

    time.sleep(1.1)  # S3 times have one-second resolution: an upload now would show
    store.publish(folder, "checkpoints")
    assert stored() == first, "nothing is uploaded again"
    (folder / "config.json").write_text('{"model_type": "llama", "changed": true}')
    same_size = (folder / "weights" / "model.safetensors").read_bytes()[::-1]  # other bytes, the same size
    (folder / "weights" / "model.safetensors").write_bytes(same_size)
    store.publish(folder, "checkpoints")
    again = stored()
    assert again[config] != first[config] and again[weights] != first[weights], "changed files are uploaded, same size or not"
    assert again[big] == first[big], "the unchanged file is not"
    assert client.get_object(Bucket="tao-artifacts", Key=weights)["Body"].read() == same_size

    assert ArtifactStoreResource(s3=s3).get().publish(folder, "checkpoints") is None, "the laptop publishes nothing"
