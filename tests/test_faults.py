"""Faults with real servers on 127.0.0.1: the MLflow tracking server or the S3 endpoint stops mid-round and starts
again on the same port with the same state; PostgreSQL restarts under the production instance while a run is
queued. The round runs through Dagster with its retry policies, as users run it, and nothing is lost or doubled."""

import contextlib
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_aws.s3 import S3Resource

from tao_dagster.defs.deploy import INSTANCE_YAML
from tao_dagster.defs.flywheel.jobs import prompt_assets
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.resources import ArtifactStoreResource, MlflowResource, default_resources
from tao_dagster.paths import PROJECT_ROOT

from .conftest import run_round, write_demo_log
from .support.servers import BIN, S3_CREDENTIALS, mlflow_server, restartable_s3_server, stop

pytestmark = [pytest.mark.servers, pytest.mark.slow]
PARTITION = "day1.csv"
TRAIN = {"epochs": 1}  # with run_round's settings for a handful of pairs


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Two torch threads on the tiny model stall each other on a busy machine (see tests/test_crash_resume.py)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def fault(server, stop_when: Callable[[], bool], hold: float) -> Iterator[dict]:
    """A thread that stops `server` once `stop_when()` holds and starts it again `hold` seconds later, while the test
    runs the round; yields what it saw (`stopped`, `started`: monotonic times)."""
    seen: dict = {}

    def run():
        try:
            while not stop_when():
                time.sleep(0.05)
            server.stop()
            seen["stopped"] = time.monotonic()
            time.sleep(hold)
            server.start()
            seen["started"] = time.monotonic()
        except Exception as err:  # reported by the test, not lost in the thread
            seen["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield seen
    thread.join(timeout=120)
    assert "error" not in seen, seen.get("error")


def prompts_scored(home: Path, model: Path, domain_file: Path, mlflow: str, artifacts: ArtifactStoreResource | None = None):
    """A project home with 40 banking queries ingested, generated and scored by the tiny model; (instance, resources)."""
    (home / "logs").mkdir(parents=True)
    write_demo_log(home / "logs" / PARTITION, 0, 40)
    overrides = {
        "domain": {"domain_file": str(domain_file)},
        "logs": {"location": str(home / "logs")},
        "policy": {"base_model": str(model), "engine": "transformers"},
        "mlflow": {"tracking_uri": mlflow},
    }
    resources = {**default_resources(home, overrides), **({"artifacts": artifacts} if artifacts else {})}
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(log_files.name, [PARTITION])
    assert dg.materialize(prompt_assets, instance=instance, resources=resources, partition_key=PARTITION).success
    return instance, resources


def step_events(result: dg.ExecuteInProcessResult, step: str) -> list[str]:
    return [e.event_type_value for e in result.all_events if e.is_step_event and e.step_key == step]


def saved_checkpoint(home: Path) -> bool:
    """A merged checkpoint is saved: training is over and the run is about to log its metrics and model."""
    return any((home / "checkpoints").glob("*/config.json"))


@pytest.mark.parametrize("client_retries", [None, "0"], ids=["client-retries", "step-retries"])
def test_mlflow_server_stopped_mid_round_keeps_one_run_and_one_model_version(
    client_retries, s3_endpoint, tmp_path, tiny_model_dir, learnable_domain_file, monkeypatch, caplog
):
    """The server stops as soon as the checkpoint is trained, before its metrics and model are logged, and starts
    again 2 s later on the same port and SQLite store. MLflow's client retries a refused connection with backoff
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by default: about 4 minutes); with none, the step fails and Dagster's retry
    policy runs it again 10 s later, which resumes the checkpoint's run instead of starting a second."""
    home, store = tmp_path / "home", tmp_path / "mlflow"
    store.mkdir()
    monkeypatch.setenv("TAO_HOME", str(home))
    if client_retries:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", client_retries)
    S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1").get_client().create_bucket(Bucket="mlflow")
    caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
    with mlflow_server(s3_endpoint, "s3://mlflow/artifacts", store) as server:
        instance, resources = prompts_scored(home, tiny_model_dir, learnable_domain_file, server.url)
        tracking: MlflowResource = resources["mlflow"]
        scored = resources["warehouse"].get().query("select count(*) as n from candidates")["n"][0]
        with fault(server, lambda: saved_checkpoint(home), hold=2.0) as seen:
            result = run_round(instance, resources, gate=False, **TRAIN)
        assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert {"stopped", "started"} <= set(seen), "the server was stopped and started during the round"
        retried = [r.getMessage() for r in caplog.records if r.name == "urllib3.connectionpool" and "Retrying" in r.getMessage()]
        step_retries = step_events(result, "tuned_checkpoint").count("STEP_UP_FOR_RETRY")
        assert (bool(retried), step_retries > 0) == ((True, False) if client_retries is None else (False, True)), "the round met the outage"
        print(f"\nMLflow down {seen['started'] - seen['stopped']:.1f} s: {len(retried)} client retries, {step_retries} step retries")

        db, client = resources["warehouse"].get(), tracking.client()
        (row,) = db.query("select checkpoint_id, mlflow_run_id, model_version, metrics from checkpoints").rows()
        checkpoint_id, run_id, model_version, metrics = row
        (run,) = client.search_runs([client.get_experiment_by_name(tracking.experiment).experiment_id])
        assert run.info.run_id == run_id and run.info.status == "FINISHED", "one run, ended, the one the warehouse names"
        (version,) = client.search_model_versions(f"name = '{tracking.registered_model}'")
        assert (version.version, version.run_id, version.tags["checkpoint_id"]) == (model_version, run_id, checkpoint_id)
        assert run.data.params["data_hash"] and run.data.params["parent"].startswith("base:")
        steps = sorted(m.step for m in client.get_metric_history(run_id, "train_loss"))  # step 0: the mean, logged last
        assert steps == list(range(len(json.loads(metrics)["loss_curve"]) + 1)), "each step's loss logged once"
        assert "eval_diff" in run.data.metrics, "eval_report logged to the same run"
        logged = {a.path for a in client.list_artifacts(run_id, "model")} | {a.path for a in client.list_artifacts(run_id, "eval")}
        assert {"model/config.json", "model/model.safetensors", "eval/report.json"} <= logged
        assert db.query("select count(*) as n from candidates")["n"][0] == scored, "no candidates generated again"
        for step in ("tuned_checkpoint", "eval_report"):
            assert step_events(result, step).count("STEP_SUCCESS") == 1


def stop_after_first_put(monkeypatch, server, prefix: str, hold: float) -> dict:
    """Stop `server` as soon as the product's S3 client has stored its first object under `prefix` (s3://bucket/key),
    from inside that client's call, so no later request of the same publish gets through; start it again `hold` seconds
    later. Returns what it saw (`stopped`, `started`)."""
    seen, get_client = {}, S3Resource.get_client
    bucket, _, key_prefix = prefix.removeprefix("s3://").partition("/")

    def restart_later():
        time.sleep(hold)
        server.start()
        seen["started"] = time.monotonic()

    def note_key(params, context, **_):
        context["fault_object"] = (params["Bucket"], params["Key"])

    def after_put(context, **_):
        put_bucket, key = context["fault_object"]
        if "stopped" not in seen and put_bucket == bucket and key.startswith(key_prefix):
            server.stop()
            seen["stopped"] = time.monotonic()
            threading.Thread(target=restart_later, daemon=True).start()

    def client_with_hook(self):
        client = get_client(self)
        client.meta.events.register("provide-client-params.s3.PutObject", note_key)
        client.meta.events.register("after-call.s3.PutObject", after_put)
        return client

    monkeypatch.setattr(S3Resource, "get_client", client_with_hook)
    return seen


def object_versions(client, bucket: str, prefix: str) -> dict[str, int]:
    """Key -> how many times it was written (the buckets keep versions, so a second upload of a key shows)."""
    listed = client.list_object_versions(Bucket=bucket, Prefix=prefix).get("Versions", [])
    return {key: sum(v["Key"] == key for v in listed) for key in {v["Key"] for v in listed}}


def test_s3_stopped_mid_round_keeps_every_object_once(tmp_path, tiny_model_dir, learnable_domain_file, monkeypatch):
    """Two outages of one S3 endpoint (moto in this process, whose buckets outlive a restart): first while the trained
    checkpoint is logged to MLflow, whose server stores artifacts in S3 (its failed writes answer 500, which MLflow's
    client retries with backoff); then right after the first object of the checkpoint is published, which fails the
    step (boto3 gives up on a refused connection within a second) and Dagster's retry policy runs it again 10 s later:
    the checkpoint is reused, and publishing uploads only the objects still missing."""
    for var, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(var, value)
    home, store = tmp_path / "home", tmp_path / "mlflow"
    store.mkdir()
    monkeypatch.setenv("TAO_HOME", str(home))
    with restartable_s3_server() as s3, mlflow_server(s3.url, "s3://mlflow/artifacts", store) as server:
        bucket = S3Resource(endpoint_url=s3.url, region_name="us-east-1")
        client = bucket.get_client()
        for name in ("mlflow", "tao-artifacts"):
            client.create_bucket(Bucket=name)
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        artifacts = ArtifactStoreResource(location="s3://tao-artifacts/round/", s3=bucket)
        instance, resources = prompts_scored(home, tiny_model_dir, learnable_domain_file, server.url, artifacts)
        publishing = stop_after_first_put(monkeypatch, s3, "s3://tao-artifacts/round/checkpoints/", hold=3.0)
        with fault(s3, lambda: saved_checkpoint(home), hold=6.0) as logging_model:
            result = run_round(instance, resources, gate=False, **TRAIN)
        assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert {"stopped", "started"} <= set(logging_model) and {"stopped", "started"} <= set(publishing)
        assert "EndpointConnectionError" in (store / "mlflow-server.log").read_text(), "the MLflow server met the outage"
        events = step_events(result, "tuned_checkpoint")
        assert events.count("STEP_UP_FOR_RETRY") == 1 and events.count("STEP_SUCCESS") == 1, "publishing failed once, then finished"

        db, tracking = resources["warehouse"].get(), resources["mlflow"]
        (row,) = db.query("select checkpoint_id, mlflow_run_id from checkpoints").rows()
        checkpoint_id, run_id = row
        local = home / "checkpoints" / checkpoint_id
        files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
        published = object_versions(client, "tao-artifacts", f"round/checkpoints/{checkpoint_id}/")
        assert published == {f"round/checkpoints/{checkpoint_id}/{f}": 1 for f in files}, "every file published, each once"
        for name in files:
            key = f"round/checkpoints/{checkpoint_id}/{name}"
            assert client.get_object(Bucket="tao-artifacts", Key=key)["Body"].read() == (local / name).read_bytes()
        report = object_versions(client, "tao-artifacts", f"round/reports/{checkpoint_id}/")
        assert set(report) == {f"round/reports/{checkpoint_id}/{f}" for f in ("report.json", "report.md", "report.png")}
        assert set(report.values()) == {1}

        mlflow_client = tracking.client()
        (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(tracking.experiment).experiment_id])
        assert run.info.run_id == run_id and run.info.status == "FINISHED"
        assert len(mlflow_client.search_model_versions(f"name = '{tracking.registered_model}'")) == 1
        prefix = f"artifacts/{run.info.experiment_id}/{run_id}/artifacts/"
        in_s3 = object_versions(client, "mlflow", prefix)
        assert {f"{prefix}model/{f}" for f in files} | {f"{prefix}eval/report.json"} <= set(in_s3), "MLflow's artifacts all in S3"
        print(f"\nMLflow artifacts written more than once: {sorted(k for k, n in in_s3.items() if n > 1)}")


def run_status(instance: dg.DagsterInstance, job: str) -> dg.DagsterRunStatus | None:
    runs = instance.get_runs(dg.RunsFilter(job_name=job))
    return runs[0].status if runs else None


def wait_until(what: str, condition: Callable[[], bool], daemon: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if daemon.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what}: the daemon {'exited' if daemon.poll() is not None else 'is alive'}, its log:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


DOWN = 10  # seconds: longer than dagster-postgres retries one connection (5 times from 0.2 s, doubling: about 6 s)


def test_postgres_restarted_while_a_run_is_queued(postgres_cluster, tmp_path, monkeypatch):
    """The production instance (deploy/dagster.prod.yaml: PostgreSQL storage, the queued run coordinator with one run
    at a time, run monitoring and retries) with Dagster's default run launcher in place of Kubernetes', and the real
    daemon. One run holds the slot while another is queued; PostgreSQL stops (fast shutdown: connections dropped) and
    starts again; then the first run is let go, and the daemon dequeues the second, which finishes."""
    dagster_home, release = tmp_path / "dagster", tmp_path / "release"
    dagster_home.mkdir()
    instance_yaml = {k: v for k, v in yaml.safe_load(INSTANCE_YAML["prod"].read_text()).items() if k != "run_launcher"}
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("TAO_TEST_RELEASE", str(release))
    location = ["-f", str(PROJECT_ROOT / "tests" / "support" / "queued_jobs.py")]

    def launch(job: str) -> None:
        subprocess.run([str(BIN / "dagster"), "job", "launch", *location, "-j", job], check=True, capture_output=True, timeout=120)

    log = tmp_path / "daemon.log"
    with log.open("w") as out, dg.DagsterInstance.get() as instance:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", *location], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            launch("held")
            wait_until("held started", lambda: run_status(instance, "held") == dg.DagsterRunStatus.STARTED, daemon, log)
            launch("queued")
            time.sleep(5)  # a few of the coordinator's dequeue rounds
            assert run_status(instance, "queued") == dg.DagsterRunStatus.QUEUED, "one run at a time: the second waits"

            postgres_cluster.stop()
            time.sleep(DOWN)  # the daemon's loops meet refused connections meanwhile
            postgres_cluster.start()
            restarted = time.time()
            release.touch()
            wait_until("queued finished", lambda: run_status(instance, "queued") == dg.DagsterRunStatus.SUCCESS, daemon, log)
        finally:
            stop(daemon)
        runs = {r.job_name: r for r in instance.get_runs()}
        assert len(instance.get_runs()) == 2 and runs["held"].status == dg.DagsterRunStatus.SUCCESS, "nothing failed or retried"
        (starting,) = instance.get_records_for_run(runs["queued"].run_id, of_type=dg.DagsterEventType.RUN_STARTING).records
        assert starting.event_log_entry.timestamp > restarted, "launched after the restart, by the same daemon"
    daemon_log = log.read_text()
    assert "Retrying failed database connection" in daemon_log, "the daemon met the outage"
    assert postgres_cluster.variables["DAGSTER_PG_PASSWORD"] not in daemon_log
    retried = daemon_log.count("Retrying failed database connection")
    print(f"\ndaemon: {retried} connections retried, {daemon_log.count('Traceback')} tracebacks")
