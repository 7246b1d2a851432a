"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

import dagster as dg

from tao_dagster.defs.candidates import candidate_responses
from tao_dagster.defs.checkpoint import tuned_checkpoint
from tao_dagster.defs.prompts import raw_prompts
from tao_dagster.defs.report import eval_report
from tao_dagster.defs.resources import default_resources
from tao_dagster.defs.scores import reward_scores

prompt_assets = [raw_prompts, candidate_responses, reward_scores]
round_assets = [tuned_checkpoint, eval_report]

score_partitions_job = dg.define_asset_job(
    "score_partitions", selection=prompt_assets, description="Ingest, generate and score the selected log-file partitions."
)
tuning_round_job = dg.define_asset_job(
    "tuning_round", selection=round_assets, description="Train on every scored partition and evaluate against the base."
)

defs = dg.Definitions(
    assets=[*prompt_assets, *round_assets],
    jobs=[score_partitions_job, tuning_round_job],
    resources=default_resources(),
)
