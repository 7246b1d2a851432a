"""The Dagster code location (`dg dev`, `dagster dev -w workspace.yaml`): everything under defs/, one folder per stage."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
