"""Resources: where things live, which model and domain to use, and the MLflow store.

Every setting has a default for the embedded demo and can be changed from the Dagster UI's launchpad,
a run config file, or the TAO_* environment variables read by `default_resources`.
"""

import os
from pathlib import Path

import dagster as dg

from tao_dagster.domain import Domain, load_domain
from tao_dagster.generation import EngineSettings
from tao_dagster.ingest import LongPrompts
from tao_dagster.models import resolve_base_model
from tao_dagster.warehouse import Warehouse

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def tao_home() -> Path:
    """The project's home: warehouse, model cache, checkpoints, reports, Dagster and MLflow stores."""
    return Path(os.environ.get("TAO_HOME", PROJECT_ROOT / ".tao_home")).resolve()


def keep_caches_in_home() -> None:
    """Point the libraries' caches under the project home and switch off their usage reporting,
    so nothing is written outside it unless the user sets these variables."""
    home = tao_home()
    for var, path in (("VLLM_CACHE_ROOT", "cache/vllm"), ("MPLCONFIGDIR", "cache/matplotlib")):
        os.environ.setdefault(var, str(home / path))
    for var in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(var, "1")


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file."""

    path: str

    def get(self) -> Warehouse:
        return Warehouse(self.path)


class DomainResource(dg.ConfigurableResource):
    """The domain (task, strategies, scorers) and the folder its production logs arrive in."""

    domain_file: str
    log_dir: str
    text_column: str = "text"
    heldout_fraction: float = 0.3
    max_prompt_chars: int = 4000
    long_prompts: LongPrompts = "skip"  # a prompt over max_prompt_chars: quarantined ("skip") or cut ("truncate")

    def load(self) -> Domain:
        return load_domain(self.domain_file)


class PolicyResource(dg.ConfigurableResource):
    """The base model and how to run it. `base_model`: `embedded`, a Hugging Face id, a directory or a .gguf file."""

    base_model: str = "embedded"
    cache_dir: str
    engine: str = "auto"
    seed: int = 0
    max_model_len: int = 1024
    gpu_memory_utilization: float = 0.3
    tensor_parallel_size: int = 1
    block_size: int = 32  # vLLM KV-cache block in tokens; 0 keeps vLLM's default

    def base_path(self) -> str:
        return resolve_base_model(self.base_model, Path(self.cache_dir))

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

    def start_run(self, run_name: str | None = None, run_id: str | None = None):
        """Start a run, or resume `run_id` to add to it."""
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        if mlflow.get_experiment_by_name(self.experiment) is None:
            mlflow.create_experiment(self.experiment, artifact_location=self.artifact_location or None)
        mlflow.set_experiment(self.experiment)
        return mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)


def default_resources() -> dict:
    keep_caches_in_home()
    home = tao_home()
    demo = PROJECT_ROOT / "assets" / "banking"
    return {
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "domain": DomainResource(
            domain_file=os.environ.get("TAO_DOMAIN", str(demo / "domain.yaml")),
            log_dir=os.environ.get("TAO_LOG_DIR", str(demo / "logs")),
        ),
        "policy": PolicyResource(
            base_model=os.environ.get("TAO_BASE_MODEL", "embedded"),
            cache_dir=str(home / "cache"),
            engine=os.environ.get("TAO_ENGINE", "auto"),
        ),
        "mlflow": MlflowResource(
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"),
            artifact_location=(home / "mlflow" / "artifacts").as_uri(),
        ),
    }
