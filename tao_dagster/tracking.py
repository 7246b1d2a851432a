"""MLflow: the runs that record each round, and the registered model whose `champion` alias is the policy served."""

import os
from pathlib import Path

from pydantic import BaseModel, Field


class Tracking(BaseModel):
    """A local SQLite store under the project home by default, or a server's URI."""

    tracking_uri: str = Field(description="MLflow tracking URI (MLFLOW_TRACKING_URI).")
    artifact_location: str = Field("", description="Where a new experiment keeps artifacts; '' lets the server decide.")
    experiment: str = "tao-dagster"
    registered_model: str = Field(description="The registered model of the domain's checkpoints: `tao-<domain name>` by default.")
    champion_alias: str = Field("champion", description="The registered model version the flywheel serves and builds on.")

    def client(self):
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # MLflow also exports the URI as MLFLOW_TRACKING_URI, which the settings read: keep the environment as it was,
        # so that one store does not become the default of everything configured after it in this process.
        exported = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.tracking_uri)
        os.environ.pop("MLFLOW_TRACKING_URI", None) if exported is None else os.environ.update(MLFLOW_TRACKING_URI=exported)
        return mlflow.MlflowClient()

    def champion_run_id(self) -> str | None:
        """The MLflow run of the model version under the champion alias, or None while the base model serves.
        Moving the alias in MLflow (a rollback, say) is all it takes to change the champion."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(self.registered_model, self.champion_alias).run_id
        except MlflowException:  # no registered model yet, or no version under the alias
            return None

    def register(self, run, checkpoint_id: str) -> tuple[str, str]:
        """The registered model version of a checkpoint: the one a killed run of it registered already (versions are
        tagged with their checkpoint_id), else a new version of this run's `model` artifact. Returns (the version,
        the run whose model it holds)."""
        client = self.client()
        if not client.search_registered_models(filter_string=f"name = '{self.registered_model}'"):
            client.create_registered_model(self.registered_model)
        found = client.search_model_versions(f"name = '{self.registered_model}' and tags.checkpoint_id = '{checkpoint_id}'")
        if found:
            first = min(found, key=lambda v: int(v.version))
            return str(first.version), first.run_id
        source = f"{run.info.artifact_uri}/model"
        created = client.create_model_version(self.registered_model, source, run.info.run_id, tags={"checkpoint_id": checkpoint_id})
        return str(created.version), run.info.run_id

    def version_tag(self, model_version: str, key: str) -> str | None:
        return self.client().get_model_version(self.registered_model, model_version).tags.get(key)

    def promote(self, model_version: str) -> None:
        self.client().set_registered_model_alias(self.registered_model, self.champion_alias, model_version)

    def tag_version(self, model_version: str, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(self.registered_model, model_version, key, value)

    def download_model(self, run_id: str, destination: Path) -> Path:
        """A run's `model` artifact, copied to `destination`."""
        import mlflow

        self.client()  # points the mlflow module at this store
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=str(destination)))

    def artifacts_beside_store(self) -> str | None:
        """For a SQLite store without an artifact location, the folder beside its file, not MLflow's ./mlruns in
        whatever directory the process runs in; None lets a server decide."""
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        return None

    def start_run(self, run_name: str | None = None, run_id: str | None = None, tags: dict[str, str] | None = None):
        """Start a run, or resume `run_id` to add to it."""
        import mlflow

        self.client()
        if mlflow.get_experiment_by_name(self.experiment) is None:
            mlflow.create_experiment(self.experiment, artifact_location=self.artifact_location or self.artifacts_beside_store())
        mlflow.set_experiment(self.experiment)
        return mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=None if run_id else tags)

    def checkpoint_run(self, checkpoint_id: str, run_name: str):
        """Start the run of a checkpoint, or resume the one an attempt that failed (MLflow or S3 down longer than
        their clients retry) or was killed started already: runs are tagged with their checkpoint_id, so a retried
        step adds to its checkpoint's one run instead of leaving a second."""
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment)
        tagged = f"tags.checkpoint_id = '{checkpoint_id}'"
        found = client.search_runs([experiment.experiment_id], tagged, order_by=["attributes.start_time"]) if experiment else []
        return self.start_run(run_name, found[0].info.run_id if found else None, {"checkpoint_id": checkpoint_id})


def registered_model_name(domain_name: str) -> str:
    """The registered model of a domain's checkpoints, so that two domains never share a champion."""
    return f"tao-{domain_name}"
