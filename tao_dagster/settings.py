"""Every setting a deployment changes, read from the environment in one place, with the embedded demo's defaults.

`ENVIRONMENT` names the variable behind each setting; `from_environment` gives the core settings a notebook
uses, and the Dagster layer builds its resources from the same table, bound to the variables that are set.
`check` fails early, naming the setting and its fix, rather than minutes into a run.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from tao_dagster.domain import DomainSettings, domain_name, load_domain
from tao_dagster.models import check_base_model
from tao_dagster.paths import PROJECT_ROOT, tao_home
from tao_dagster.policies import PolicySettings
from tao_dagster.serving.settings import ServeSettings
from tao_dagster.storage import LogSource, s3_client
from tao_dagster.traces import LogFormatName
from tao_dagster.tracking import Tracking, registered_model_name

PROFILES = ("laptop", "prod")

# variable -> the (section, field) settings it sets
ENVIRONMENT = {
    "TAO_DOMAIN": [("domain", "domain_file")],
    "TAO_LOGS": [("logs", "location")],
    "TAO_LOG_FORMAT": [("domain", "log_format")],
    "TAO_ARTIFACTS": [("artifacts", "location")],
    "TAO_ROUND_MIN_NEW_PROMPTS": [("flywheel", "min_new_prompts")],
    "TAO_MAX_FILES_PER_RUN": [("flywheel", "max_files_per_run")],
    "TAO_BASE_MODEL": [("policy", "base_model")],
    "TAO_ENGINE": [("policy", "engine")],
    "TAO_GPU_MEMORY_UTILIZATION": [("policy", "gpu_memory_utilization")],
    "TAO_VLLM_BLOCK_SIZE": [("policy", "block_size")],
    "TAO_GPUS": [("policy", "tensor_parallel_size"), ("policy", "train_processes")],
    "MLFLOW_TRACKING_URI": [("mlflow", "tracking_uri")],
    "TAO_SERVE_MODEL": [("serve", "model_name")],
    "TAO_SERVE_HOST": [("serve", "host")],
    "TAO_SERVE_PORT": [("serve", "port")],
    "TAO_SERVE_ADD_INSTRUCTION": [("serve", "add_instruction")],
    "TAO_SERVE_POLL_SECONDS": [("serve", "poll_seconds")],
    "TAO_SERVE_ROTATE_BYTES": [("serve", "rotate_bytes")],
    "TAO_SERVE_ROTATE_SECONDS": [("serve", "rotate_seconds")],
}


def profile() -> str:
    """The deployment profile (TAO_PROFILE): `laptop`, or `prod` (PostgreSQL, Kubernetes, S3, an MLflow server)."""
    name = os.environ.get("TAO_PROFILE", "laptop")
    if name not in PROFILES:
        raise ValueError(f"TAO_PROFILE: {name!r} is not a profile; use one of {sorted(PROFILES)}")
    return name


def gpus() -> int:
    """GPUs of a GPU step's pod (TAO_GPUS): vLLM's tensor-parallel size and the training processes."""
    value = os.environ.get("TAO_GPUS", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"TAO_GPUS: {value!r} is not a number of GPUs (1 or more)")
    return int(value)


def defaults(home: Path | None = None) -> dict[str, dict]:
    """The settings of each section when no variable is set: the embedded demo, stored under the project home."""
    home = home or tao_home()
    tracking_uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    return {
        "warehouse": {"path": str(home / "warehouse.duckdb")},
        "domain": {"domain_file": str(PROJECT_ROOT / "assets" / "banking" / "domain.yaml")},
        "logs": {"location": str(home / "logs")},
        "artifacts": {"location": ""},
        "flywheel": {"min_new_prompts": 50},
        "policy": {"cache_dir": str(home / "cache")},
        "mlflow": {"tracking_uri": tracking_uri},  # artifacts beside a SQLite store; a server decides its own
        "serve": {},  # `tao-dagster serve` only: no Dagster resource
    }


def from_environment(home: Path | None = None, overrides: dict[str, dict] | None = None) -> dict[str, dict]:
    """Each section's settings: the defaults in `home` (the project home if None), then the variables that are set
    (values as strings), then `overrides` (section -> fields). The registered model is named after the domain unless set."""
    sections = defaults(home)
    for variable, targets in ENVIRONMENT.items():
        if variable in os.environ:
            for section, name in targets:
                sections[section][name] = os.environ[variable]
    if "TAO_GPUS" in os.environ:
        gpus()
    for section, values in (overrides or {}).items():
        sections[section].update(values)
    sections["mlflow"].setdefault("registered_model", registered_model_name(domain_name(sections["domain"]["domain_file"])))
    return sections


@dataclass(frozen=True)
class Settings:
    """The core settings of a deployment, as a notebook uses them."""

    domain: DomainSettings
    policy: PolicySettings
    tracking: Tracking
    logs: LogSource
    warehouse_path: str
    serve: ServeSettings


def core_settings(home: Path | None = None, overrides: dict[str, dict] | None = None) -> Settings:
    """The core settings, as from_environment gives them."""
    sections = from_environment(home, overrides)
    return Settings(
        DomainSettings(**sections["domain"]),
        PolicySettings(**sections["policy"]),
        Tracking(**sections["mlflow"]),
        LogSource(sections["logs"]["location"], (home or tao_home()) / "cache" / "logs", s3_client),
        sections["warehouse"]["path"],
        ServeSettings(**sections["serve"]),
    )


def check(sections: dict[str, dict]) -> None:
    """Only cheap checks: the domain file and its scorers, a local base model path, the log format, a local log folder, and in
    the `prod` profile that logs and artifacts are in S3 and MLflow is a server, since pods do not keep files."""
    try:
        load_domain(sections["domain"]["domain_file"])
    except ValueError as err:
        raise ValueError(f"TAO_DOMAIN: {err}") from err
    check_base_model(sections["policy"].get("base_model", "embedded"))
    log_format = sections["domain"].get("log_format", "auto")
    if log_format not in get_args(LogFormatName):
        raise ValueError(f"TAO_LOG_FORMAT: {log_format!r} is not a log format; use one of {', '.join(get_args(LogFormatName))}")
    logs = sections["logs"]["location"]
    if not logs.startswith("s3://"):  # a bucket is checked by the sensor's first listing
        LogSource(logs, Path()).list_files()
    if profile() == "prod":
        needed = {
            "TAO_LOGS": logs.startswith("s3://"),
            "TAO_ARTIFACTS": sections["artifacts"]["location"].startswith("s3://"),
            "MLFLOW_TRACKING_URI": sections["mlflow"]["tracking_uri"].startswith(("http://", "https://", "databricks")),
        }
        missing = [name for name, ok in needed.items() if not ok]
        if missing:
            raise ValueError(f"TAO_PROFILE=prod: set {', '.join(missing)} (logs and artifacts at s3://..., MLflow at a server's URL)")
