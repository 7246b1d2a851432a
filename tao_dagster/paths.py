"""Where the project lives: the checkout's root and the project home for everything it writes."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def tao_home() -> Path:
    """The project's home: warehouse, model cache, checkpoints, reports, Dagster and MLflow stores."""
    return Path(os.environ.get("TAO_HOME", PROJECT_ROOT / ".tao_home")).resolve()


def keep_caches_in_home() -> None:
    """Point the libraries' caches under the project home and switch off their usage reporting, so nothing is
    written outside it unless the user sets these variables. Called by the entry points (the CLI, the code
    location), never on import."""
    home = tao_home()
    for var, path in (("VLLM_CACHE_ROOT", "cache/vllm"), ("MPLCONFIGDIR", "cache/matplotlib")):
        os.environ.setdefault(var, str(home / path))
    for var in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(var, "1")
