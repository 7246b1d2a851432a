"""Which model generates and is trained from: the champion checkpoint once one is promoted, else the base."""

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from tao_dagster.errors import StageError
from tao_dagster.generation import EngineSettings
from tao_dagster.models import resolve_base_model
from tao_dagster.paths import tao_home
from tao_dagster.tracking import Tracking
from tao_dagster.warehouse import Warehouse


class PolicySettings(EngineSettings):
    """The base model, how it generates (EngineSettings) and how it trains."""

    base_model: str = Field("embedded", description="`embedded`, a Hugging Face id, a directory or a .gguf file (TAO_BASE_MODEL).")
    cache_dir: str = Field(description="Downloaded and converted base models.")
    train_processes: int = Field(
        1, description="Data-parallel training processes, one per GPU (accelerate); 1 trains in the step's process."
    )

    def base_path(self) -> str:
        try:
            return resolve_base_model(self.base_model, Path(self.cache_dir))
        except (FileNotFoundError, RuntimeError) as err:  # a missing model file or package does not appear on a retry
            raise StageError(str(err)) from err

    def base_version(self) -> str:
        """The policy version of the base model, part of every candidate's key."""
        return "base:" + Path(self.base_path()).name


@dataclass(frozen=True)
class Policy:
    version: str  # "base:<model dir>" or "ckpt:<checkpoint id>": part of every candidate's key
    path: str
    checkpoint_id: str | None = None
    model_version: str | None = None  # in the MLflow registry


def base_policy(settings: PolicySettings) -> Policy:
    return Policy(settings.base_version(), settings.base_path())


def checkpoint_version(checkpoint_id: str) -> str:
    return f"ckpt:{checkpoint_id}"


def checkpoint_policy(db: Warehouse, checkpoint_id: str, tracking: Tracking) -> Policy:
    """A trained checkpoint as a policy; its weights come back from its MLflow run if the local copy is gone."""
    row = db.checkpoint(checkpoint_id)
    path = Path(row["path"])
    if not (path / "config.json").is_file():
        path = tracking.download_model(row["mlflow_run_id"], tao_home() / "cache" / "checkpoints" / checkpoint_id)
    return Policy(checkpoint_version(checkpoint_id), str(path), checkpoint_id, row["model_version"])


def champion_checkpoint(db: Warehouse, tracking: Tracking) -> str | None:
    """The checkpoint id under the MLflow champion alias, or None while the base model serves."""
    run_id = tracking.champion_run_id()
    if run_id is None:
        return None
    checkpoint_id = db.checkpoint_of_run(run_id)
    if checkpoint_id is None:
        raise StageError(
            f"the MLflow alias {tracking.champion_alias!r} of {tracking.registered_model} points at run {run_id}, "
            f"which this warehouse ({db.path}) did not train: move the alias or use the warehouse that trained it"
        )
    return checkpoint_id


def champion_policy(db: Warehouse, tracking: Tracking) -> Policy | None:
    checkpoint_id = champion_checkpoint(db, tracking)
    return checkpoint_policy(db, checkpoint_id, tracking) if checkpoint_id else None


def current_policy(db: Warehouse, settings: PolicySettings, tracking: Tracking) -> Policy:
    """The policy new candidates come from and the next round trains from."""
    return champion_policy(db, tracking) or base_policy(settings)


def current_version(db: Warehouse, settings: PolicySettings, tracking: Tracking) -> str:
    """The current policy's version alone: for deciding whether a round is due, without fetching its weights."""
    checkpoint_id = champion_checkpoint(db, tracking)
    return checkpoint_version(checkpoint_id) if checkpoint_id else settings.base_version()


def policy_of_version(db: Warehouse, settings: PolicySettings, tracking: Tracking, version: str) -> Policy:
    """The policy a version names: the base model, or a trained checkpoint."""
    if version.startswith("ckpt:"):
        return checkpoint_policy(db, version.removeprefix("ckpt:"), tracking)
    return base_policy(settings)
