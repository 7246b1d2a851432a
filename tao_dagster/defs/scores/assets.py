"""reward_scores: every candidate scored by the domain's label-free scorers, combined per prompt."""

import dagster as dg

from tao_dagster.defs.candidates.assets import candidate_responses
from tao_dagster.defs.deploy import cpu_step
from tao_dagster.defs.partitions import prompt_partition_asset
from tao_dagster.defs.resources import DomainResource, WarehouseResource
from tao_dagster.defs.steps import as_metadata, stage_step
from tao_dagster.diagnostics import Alarm, alarm_rows
from tao_dagster.hardware import compute_precision
from tao_dagster.pipeline.scores import score_partitions

NO_HACKING_ALARMS = "no_reward_hacking_alarms"


def hacking_check(alarms: list[Alarm]) -> dg.AssetCheckResult:
    """A warning, not a block: an alarm asks a human to look at the top responses."""
    return dg.AssetCheckResult(
        check_name=NO_HACKING_ALARMS,
        passed=not alarms,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"alarms": dg.MetadataValue.json(alarm_rows(alarms))},
    )


@prompt_partition_asset(
    deps=[candidate_responses],
    check_specs=[
        dg.AssetCheckSpec(
            NO_HACKING_ALARMS,
            asset="reward_scores",
            description="Warns when the best-scored candidates look like reward hacking: one answer or one field value "
            "for most prompts, repetition, or a reward that rises with length.",
        )
    ],
    kinds={"duckdb", "polars"},
    op_tags=cpu_step(),
    description="Label-free scores of every candidate (rules and verifiers, embedding-based content fit, self-consistency, "
    "LLM judges, reward models), combined with the domain's weights and normalised per prompt. "
    "Scorers are versioned: a changed scorer re-scores only itself.",
)
@stage_step
def reward_scores(context: dg.AssetExecutionContext, domain: DomainResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
    summary, alarms = score_partitions(warehouse.get(), domain, list(context.partition_keys), context.log)
    metadata = {**summary, **compute_precision().metadata()}  # the precision of the scorers that run a model
    return dg.MaterializeResult(metadata=as_metadata(metadata), check_results=[hacking_check(alarms)])
