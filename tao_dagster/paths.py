"""Where the project lives: the checkout's root and the project home for everything it writes."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def tao_home() -> Path:
    """The project's home: warehouse, model cache, checkpoints, reports, Dagster and MLflow stores."""
    return Path(os.environ.get("TAO_HOME", PROJECT_ROOT / ".tao_home")).resolve()
