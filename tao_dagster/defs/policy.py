"""Which model generates and is trained from: the champion checkpoint once one is promoted, else the base."""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from tao_dagster.defs.resources import MlflowResource, PolicyResource, tao_home
from tao_dagster.warehouse import Warehouse


@dataclass(frozen=True)
class Policy:
    version: str  # "base:<model dir>" or "ckpt:<checkpoint id>": part of every candidate's key
    path: str
    checkpoint_id: str | None = None
    model_version: str | None = None  # in the MLflow registry


def base_policy(policy: PolicyResource) -> Policy:
    return Policy(policy.base_version(), policy.base_path())


def checkpoint_version(checkpoint_id: str) -> str:
    return f"ckpt:{checkpoint_id}"


def checkpoint_policy(db: Warehouse, checkpoint_id: str, mlflow: MlflowResource) -> Policy:
    """A trained checkpoint as a policy; its weights come back from its MLflow run if the local copy is gone."""
    row = db.query("select path, mlflow_run_id, model_version from checkpoints where checkpoint_id = ?", [checkpoint_id]).row(0, named=True)
    path = Path(row["path"])
    if not (path / "config.json").is_file():
        import mlflow as mlf

        mlflow.client()  # points the mlflow module at this store
        local = tao_home() / "cache" / "checkpoints" / checkpoint_id
        path = Path(mlf.artifacts.download_artifacts(run_id=row["mlflow_run_id"], artifact_path="model", dst_path=str(local)))
    return Policy(checkpoint_version(checkpoint_id), str(path), checkpoint_id, row["model_version"])


def champion_checkpoint(db: Warehouse, mlflow: MlflowResource) -> str | None:
    """The checkpoint id under the MLflow champion alias, or None while the base model serves."""
    run_id = mlflow.champion_run_id()
    if run_id is None:
        return None
    found = db.query("select checkpoint_id from checkpoints where mlflow_run_id = ?", [run_id])
    if found.height == 0:
        raise dg.Failure(
            f"the MLflow alias {mlflow.champion_alias!r} of {mlflow.registered_model} points at run {run_id}, "
            f"which this warehouse ({db.path}) did not train: move the alias or use the warehouse that trained it",
            allow_retries=False,
        )
    return found["checkpoint_id"][0]


def champion_policy(db: Warehouse, mlflow: MlflowResource) -> Policy | None:
    checkpoint_id = champion_checkpoint(db, mlflow)
    return checkpoint_policy(db, checkpoint_id, mlflow) if checkpoint_id else None


def current_policy(db: Warehouse, policy: PolicyResource, mlflow: MlflowResource) -> Policy:
    """The policy new candidates come from and the next round trains from."""
    return champion_policy(db, mlflow) or base_policy(policy)


def current_version(db: Warehouse, policy: PolicyResource, mlflow: MlflowResource) -> str:
    """The current policy's version alone: for deciding whether a round is due, without fetching its weights."""
    checkpoint_id = champion_checkpoint(db, mlflow)
    return checkpoint_version(checkpoint_id) if checkpoint_id else policy.base_version()
