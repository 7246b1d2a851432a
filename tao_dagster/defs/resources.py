"""Resources: where things live, which model and domain to use, and the MLflow store.

Every setting has a default for the embedded demo and can be changed from the Dagster UI's launchpad,
a run config file, or the TAO_* environment variables read by `default_resources`.
"""

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dagster as dg
from dagster_aws.s3 import S3Resource

from tao_dagster.defs.deploy import gpus, profile
from tao_dagster.defs.partitions import partition_key
from tao_dagster.domain import Domain, load_domain
from tao_dagster.generation import EngineSettings
from tao_dagster.ingest import LOG_SUFFIXES, LongPrompts
from tao_dagster.models import check_base_model, resolve_base_model
from tao_dagster.paths import PROJECT_ROOT, tao_home
from tao_dagster.warehouse import Warehouse

# For the steps whose failures can pass: a generation engine that fails to start, MLflow or S3 I/O. Retried
# after 10 s, then 30 s; each retry resumes from what the failed attempt stored. Deterministic errors (bad
# configuration, no training pairs) raise dg.Failure(allow_retries=False) and fail at once.
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)
INTERRUPTED = "interrupted (Ctrl-C, or the run was terminated): not retried"
interrupt_received = threading.Event()  # set in this process once a step was interrupted


def stops_when_interrupted(step):
    """For a step with TRANSIENT_RETRY: an interrupt fails it without retries.

    Dagster retries an interrupted step that has a retry policy (a preempted pod's SIGTERM arrives as an
    interrupt), so one Ctrl-C in `tao-dagster demo` would be retried twice. An interrupt is a request to stop:
    the step fails at once, its engine closed on the way out. Lost pods are retried whole by run monitoring.
    """

    @functools.wraps(step)
    def run(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError) as err:
            interrupt_received.set()
            raise dg.Failure(INTERRUPTED, allow_retries=False) from err

    return run


def keep_caches_in_home() -> None:
    """Point the libraries' caches under the project home and switch off their usage reporting,
    so nothing is written outside it unless the user sets these variables."""
    home = tao_home()
    for var, path in (("VLLM_CACHE_ROOT", "cache/vllm"), ("MPLCONFIGDIR", "cache/matplotlib")):
        os.environ.setdefault(var, str(home / path))
    for var in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(var, "1")


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/"); the prefix is "" at the bucket's root."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file."""

    path: str

    def get(self) -> Warehouse:
        return Warehouse(self.path)


class DomainResource(dg.ConfigurableResource):
    """The domain: task, strategies, scorers, and how its logs are read and evaluated."""

    domain_file: str
    text_column: str = "text"
    heldout_fraction: float = 0.3
    max_prompt_chars: int = 4000
    max_eval_prompts: int = 0  # evaluate at most this many held-out prompts, in a fixed hashed order (0: all)
    long_prompts: LongPrompts = "skip"  # a prompt over max_prompt_chars: quarantined ("skip") or cut ("truncate")

    def load(self) -> Domain:
        try:
            return load_domain(self.domain_file)
        except ValueError as err:  # a malformed domain file fails the same way on every retry
            raise dg.Failure(str(err), allow_retries=False) from err


@dataclass(frozen=True)
class LogFile:
    """A production log file as the log source lists it."""

    key: str  # its partition key
    name: str  # path or s3:// URL, for messages
    fingerprint: str  # size and mtime (local) or ETag and size (S3): changes when the content does


class LogSourceResource(dg.ConfigurableResource):
    """Where production log files arrive: a local folder, or `s3://bucket/prefix` read through dagster-aws's
    S3Resource (endpoint and credentials from the environment, as boto3 reads them)."""

    location: str
    s3: S3Resource

    def list_files(self) -> dict[str, LogFile]:
        """Partition key -> log file, for every file with a log suffix (sub-folders of a local folder are not read)."""
        files = self._list_s3() if self.location.startswith("s3://") else self._list_folder()
        return {partition_key(name): LogFile(partition_key(name), where, fingerprint) for name, where, fingerprint in files}

    def _list_folder(self) -> list[tuple[str, str, str]]:
        folder = Path(self.location)
        if not folder.is_dir():
            raise FileNotFoundError(f"log location {folder} is not a readable folder: create it, or set TAO_LOGS or the logs resource")
        listed = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in LOG_SUFFIXES and path.is_file():
                stat = path.stat()
                listed.append((path.name, str(path), f"{stat.st_size}:{stat.st_mtime_ns}"))
        return listed

    def _list_s3(self) -> list[tuple[str, str, str]]:
        from dagster_aws.s3.sensor import get_objects

        bucket, prefix = split_s3_url(self.location)
        try:
            objects = get_objects(bucket, prefix, client=self.s3.get_client())
        except Exception as err:
            raise RuntimeError(f"log location {self.location} could not be listed: {err}") from err
        listed = []
        for obj in objects:
            name, etag = obj["Key"].removeprefix(prefix), obj["ETag"].strip('"')
            if Path(name).suffix.lower() in LOG_SUFFIXES:
                listed.append((name, f"s3://{bucket}/{obj['Key']}", f"{etag}:{obj['Size']}"))
        return listed

    def fetch(self, key: str, listed: dict[str, LogFile]) -> tuple[Path, str]:
        """A local copy of the partition's file and its fingerprint, given one `list_files()` for the whole run.
        A file gone since it was listed gives a path that does not exist, which ingestion quarantines like
        any unreadable file."""
        found = listed.get(key)
        if found is None:
            return Path(self.location) / key, ""
        if not found.name.startswith("s3://"):
            return Path(found.name), found.fingerprint
        bucket, _, object_key = found.name.removeprefix("s3://").partition("/")
        local = tao_home() / "cache" / "logs" / key
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.s3.get_client().download_file(bucket, object_key, str(local))
        except Exception:  # deleted since it was listed: quarantined as unreadable
            local.unlink(missing_ok=True)
        return local, found.fingerprint


class ArtifactStoreResource(dg.ConfigurableResource):
    """Where checkpoints and reports are published besides the project home: nowhere more ("", the laptop),
    or `s3://bucket/prefix` through dagster-aws's S3Resource, so that they outlive the pod that wrote them."""

    location: str = ""
    s3: S3Resource

    def publish(self, folder: Path, kind: str) -> str | None:
        """Copy `folder` to <location>/<kind>/<folder name>/, skipping objects already there with the same
        size (a rerun or a reused checkpoint uploads nothing); its URI, or None without a location."""
        if not self.location:
            return None
        bucket, prefix = split_s3_url(self.location)
        base = f"{prefix}{kind}/{folder.name}"
        client = self.s3.get_client()
        stored = {
            obj["Key"]: obj["Size"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{base}/")
            for obj in page.get("Contents", [])
        }
        for path in sorted(folder.rglob("*")):
            key = f"{base}/{path.relative_to(folder).as_posix()}"
            if path.is_file() and stored.get(key) != path.stat().st_size:
                client.upload_file(str(path), bucket, key)
        return f"s3://{bucket}/{base}"


class PolicyResource(dg.ConfigurableResource):
    """The base model and how to run it. `base_model`: `embedded`, a Hugging Face id, a directory or a .gguf file."""

    base_model: str = "embedded"
    cache_dir: str
    engine: Literal["auto", "vllm", "transformers"] = "auto"
    seed: int = 0
    max_model_len: int = 1024
    gpu_memory_utilization: float = 0.3
    tensor_parallel_size: int = 1  # GPUs vLLM splits the model over
    block_size: int = 32  # vLLM KV-cache block in tokens; 0 keeps vLLM's default
    # Candidates generated and stored per warehouse transaction: a crash loses at most the chunk in flight (about
    # 3 minutes of work on a 2-core CPU). Each chunk ends with a tail where vLLM's batch runs part-empty, so
    # fewer, bigger chunks generate faster; the engine stays loaded across chunks.
    generation_chunk: int = 2048
    train_processes: int = 1  # data-parallel training processes, one per GPU (accelerate); 1 trains in the step's process

    def base_path(self) -> str:
        try:
            return resolve_base_model(self.base_model, Path(self.cache_dir))
        except (FileNotFoundError, RuntimeError) as err:  # a missing model file or package does not appear on a retry
            raise dg.Failure(str(err), allow_retries=False) from err

    def base_version(self) -> str:
        """The policy version of the base model, part of every candidate's key."""
        return "base:" + Path(self.base_path()).name

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            engine=self.engine,
            seed=self.seed,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size,
            block_size=self.block_size or None,
        )


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking: a local SQLite store under the project home by default, or a server's URI."""

    tracking_uri: str
    artifact_location: str = ""
    experiment: str = "tao-dagster"
    registered_model: str = "tao-banking"
    champion_alias: str = "champion"  # the registered model version the flywheel serves and builds on

    def client(self):
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.MlflowClient()

    def champion_run_id(self) -> str | None:
        """The MLflow run of the model version under the champion alias, or None while the base model serves.
        Moving the alias in MLflow (a rollback, say) is all it takes to change the champion."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(self.registered_model, self.champion_alias).run_id
        except MlflowException:  # no registered model yet, or no version under the alias
            return None

    def register(self, run) -> str:
        """Register the run's `model` artifact as a new version of the registered model; returns the version."""
        client = self.client()
        if not client.search_registered_models(filter_string=f"name = '{self.registered_model}'"):
            client.create_registered_model(self.registered_model)
        return client.create_model_version(self.registered_model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version

    def promote(self, model_version: str) -> None:
        self.client().set_registered_model_alias(self.registered_model, self.champion_alias, model_version)

    def start_run(self, run_name: str | None = None, run_id: str | None = None):
        """Start a run, or resume `run_id` to add to it."""
        import mlflow

        self.client()
        if mlflow.get_experiment_by_name(self.experiment) is None:
            mlflow.create_experiment(self.experiment, artifact_location=self.artifact_location or None)
        mlflow.set_experiment(self.experiment)
        return mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)


class FlywheelResource(dg.ConfigurableResource):
    """When the flywheel schedule starts a tuning round (its cron comes from TAO_ROUND_CRON)."""

    min_new_prompts: int = 50  # training prompts scored under the current policy since the last checkpoint


def check_settings(resources: dict) -> None:
    """Fail when the code location loads, naming the setting and its fix, rather than minutes into a run.
    Only cheap checks: the domain file and its scorers, a local base model path, a local log folder, and in
    the `prod` profile that logs and artifacts are in S3 and MLflow is a server, since pods do not keep files."""
    try:
        load_domain(resources["domain"].domain_file)
    except ValueError as err:
        raise ValueError(f"TAO_DOMAIN: {err}") from err
    check_base_model(resources["policy"].base_model)
    if not resources["logs"].location.startswith("s3://"):  # a bucket is checked by the sensor's first listing
        resources["logs"].list_files()
    if profile() == "prod":
        needed = {
            "TAO_LOGS": resources["logs"].location.startswith("s3://"),
            "TAO_ARTIFACTS": resources["artifacts"].location.startswith("s3://"),
            "MLFLOW_TRACKING_URI": resources["mlflow"].tracking_uri.startswith(("http://", "https://", "databricks")),
        }
        missing = [name for name, ok in needed.items() if not ok]
        if missing:
            raise ValueError(f"TAO_PROFILE=prod: set {', '.join(missing)} (logs and artifacts at s3://..., MLflow at a server's URL)")


def default_resources() -> dict:
    keep_caches_in_home()
    home = tao_home()
    demo = PROJECT_ROOT / "assets" / "banking"
    logs = os.environ.get("TAO_LOGS") or str(home / "logs")
    if "TAO_LOGS" not in os.environ:
        (home / "logs").mkdir(parents=True, exist_ok=True)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    # A tracking server decides where artifacts go (its --artifacts-destination); a local store keeps them in the home.
    local_store = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    artifact_location = (home / "mlflow" / "artifacts").as_uri() if local_store else ""
    resources = {
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "domain": DomainResource(domain_file=os.environ.get("TAO_DOMAIN", str(demo / "domain.yaml"))),
        "logs": LogSourceResource(location=logs, s3=S3Resource()),
        "flywheel": FlywheelResource(min_new_prompts=int(os.environ.get("TAO_ROUND_MIN_NEW_PROMPTS", "50"))),
        "artifacts": ArtifactStoreResource(location=os.environ.get("TAO_ARTIFACTS", ""), s3=S3Resource()),
        "policy": PolicyResource(
            base_model=os.environ.get("TAO_BASE_MODEL", "embedded"),
            cache_dir=str(home / "cache"),
            engine=os.environ.get("TAO_ENGINE", "auto"),
            gpu_memory_utilization=float(os.environ.get("TAO_GPU_MEMORY_UTILIZATION", "0.3")),
            block_size=int(os.environ.get("TAO_VLLM_BLOCK_SIZE", "32")),
            tensor_parallel_size=gpus(),
            train_processes=gpus(),
        ),
        "mlflow": MlflowResource(tracking_uri=tracking_uri, artifact_location=artifact_location),
    }
    check_settings(resources)
    return resources
