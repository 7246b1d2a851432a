"""The two jobs of the flywheel: score new log-file partitions, and run a tuning round."""

import dagster as dg

from tao_dagster.defs.candidates.assets import candidate_responses
from tao_dagster.defs.checkpoint.assets import tuned_checkpoint
from tao_dagster.defs.prompts.assets import raw_prompts
from tao_dagster.defs.report.assets import eval_report
from tao_dagster.defs.scores.assets import reward_scores

prompt_assets = [raw_prompts, candidate_responses, reward_scores]
round_assets = [tuned_checkpoint, eval_report]

score_partitions_job = dg.define_asset_job(
    "score_partitions", selection=prompt_assets, description="Ingest, generate and score the selected log-file partitions."
)
tuning_round_job = dg.define_asset_job(
    "tuning_round",
    selection=round_assets,
    description="Train from the current policy on its scored candidates, gate the checkpoint against the base and the "
    "champion, and evaluate it.",
)
