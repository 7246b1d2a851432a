"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

import dagster as dg

from tao_dagster.defs.deploy import executor
from tao_dagster.defs.flywheel import flywheel_round, new_log_files, prompt_assets, round_assets, score_partitions_job, tuning_round_job
from tao_dagster.defs.gate import promotion_gate
from tao_dagster.defs.resources import default_resources

defs = dg.Definitions(
    assets=[*prompt_assets, *round_assets],
    asset_checks=[promotion_gate],
    jobs=[score_partitions_job, tuning_round_job],
    sensors=[new_log_files],
    schedules=[flywheel_round],
    resources=default_resources(),
    executor=executor(),
)
