"""Resources: the core's settings as Dagster resources, bound to the TAO_* variables that are set.

Every setting has a default for the embedded demo and can be changed from the launchpad, a run config file,
or the environment variables of tao_dagster.settings.ENVIRONMENT.
"""

import os
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from tao_dagster.defs.deploy import executor
from tao_dagster.domain import DomainSettings
from tao_dagster.paths import keep_caches_in_home, tao_home
from tao_dagster.policies import PolicySettings
from tao_dagster.settings import ENVIRONMENT, check, from_environment
from tao_dagster.storage import ArtifactStore, LogSource
from tao_dagster.tracking import Tracking
from tao_dagster.warehouse import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file."""

    path: str

    def get(self) -> Warehouse:
        return Warehouse(self.path)


class DomainResource(dg.ConfigurableResource, DomainSettings):
    """The domain: task, strategies, scorers, and how its logs are read and evaluated."""


class PolicyResource(dg.ConfigurableResource, PolicySettings):
    """The base model and how to run it."""


class MlflowResource(dg.ConfigurableResource, Tracking):
    """MLflow tracking and the registered model."""


class FlywheelResource(dg.ConfigurableResource):
    """When the flywheel schedule starts a tuning round (its cron comes from TAO_ROUND_CRON)."""

    min_new_prompts: int = Field(50, description="Training prompts scored under the current policy since the last checkpoint.")
    max_files_per_run: int = Field(
        50,
        description="Most new log files one scoring run takes: a burst of files becomes runs of at most this many "
        "partitions, each loading the engine once.",
    )


class LogSourceResource(dg.ConfigurableResource):
    """Where production log files arrive: a local folder, or `s3://bucket/prefix` read through dagster-aws's
    S3Resource (endpoint and credentials from the environment, as boto3 reads them)."""

    location: str
    s3: S3Resource

    def get(self) -> LogSource:
        return LogSource(self.location, tao_home() / "cache" / "logs", self.s3.get_client)


class ArtifactStoreResource(dg.ConfigurableResource):
    """Where checkpoints and reports are published besides the project home: nowhere more (""), or `s3://bucket/prefix`."""

    location: str = ""
    s3: S3Resource

    def get(self) -> ArtifactStore:
        return ArtifactStore(self.location, self.s3.get_client)


RESOURCES = {
    "warehouse": WarehouseResource,
    "domain": DomainResource,
    "logs": LogSourceResource,
    "artifacts": ArtifactStoreResource,
    "flywheel": FlywheelResource,
    "policy": PolicyResource,
    "mlflow": MlflowResource,
}


def bound(section: str, name: str, variable: str, value: str):
    """A field set by `variable` as a dg.EnvVar, read when the run starts and shown as the variable, not its value
    (Dagster has string and integer EnvVars; other types take the value)."""
    kind = RESOURCES[section].model_fields[name].annotation
    return {int: dg.EnvVar.int, str: dg.EnvVar}[kind](variable) if kind in (int, str) else value


def default_resources(home: Path | None = None, overrides: dict[str, dict] | None = None) -> dict:
    """The resources of the code location, from tao_dagster.settings.from_environment(home, overrides): the one
    factory, also of the CLI, the tests and the benches. Checked before anything runs."""
    sections = {section: values for section, values in from_environment(home, overrides).items() if section in RESOURCES}
    if "TAO_LOGS" not in os.environ and "location" not in (overrides or {}).get("logs", {}):
        Path(sections["logs"]["location"]).mkdir(parents=True, exist_ok=True)
    check(sections)
    for variable, targets in ENVIRONMENT.items():
        for section, name in targets:
            if variable in os.environ and section in sections and name not in (overrides or {}).get(section, {}):
                sections[section][name] = bound(section, name, variable, sections[section][name])
    for section in ("logs", "artifacts"):
        sections[section]["s3"] = S3Resource()
    return {section: RESOURCES[section](**values) for section, values in sections.items()}


@dg.definitions
def resources() -> dg.Definitions:
    keep_caches_in_home()
    return dg.Definitions(resources=default_resources(), executor=executor())
