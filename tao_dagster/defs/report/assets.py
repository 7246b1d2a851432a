"""eval_report: base and tuned models answer the held-out prompts; did label-free tuning help?"""

import base64

import dagster as dg

from tao_dagster.defs.checkpoint.assets import latest_checkpoint, tuned_checkpoint
from tao_dagster.defs.deploy import gpu_step
from tao_dagster.defs.prompts.assets import raw_prompts
from tao_dagster.defs.resources import ArtifactStoreResource, DomainResource, MlflowResource, PolicyResource, WarehouseResource
from tao_dagster.defs.scores.assets import NO_HACKING_ALARMS, hacking_check
from tao_dagster.defs.steps import TRANSIENT_RETRY, stage_step
from tao_dagster.diagnostics import Alarm
from tao_dagster.hardware import compute_precision
from tao_dagster.pipeline.report import evaluate

CHECKS = {
    NO_HACKING_ALARMS: "Warns when the tuned answers look like reward hacking: one field value for most prompts, "
    "repetition, or a reward that rose while the answers grew much longer.",
    "tuned_beats_base": "Held-out mean reward: the 95% CI of tuned - base lies above 0.",
    "outside_check_beats_majority": "Tuned accuracy against held-out labels beats always answering the commonest label.",
    "serving_cost_not_higher": "The tuned model's answers are no longer on average than the base model's.",
    "reports_a_promoted_checkpoint": "Warns when the report describes a checkpoint the promotion gate did not promote "
    "(eval_report materialized on its own after a refused or skipped gate): one that does not serve.",
}


def report_checks(report: dict, alarms: list[Alarm]) -> list[dg.AssetCheckResult]:
    check = report.get("outside_check", {})
    tokens = {"base_mean_tokens": report["base_mean_tokens"], "tuned_mean_tokens": report["tuned_mean_tokens"]}
    return [
        hacking_check(alarms),
        dg.AssetCheckResult(
            check_name="tuned_beats_base",
            passed=bool(report["diff_ci_low"] > 0),
            metadata={"diff": report["diff"], "diff_ci_low": report["diff_ci_low"]},
        ),
        dg.AssetCheckResult(
            check_name="outside_check_beats_majority",
            passed=bool(check.get("tuned_accuracy_ci_low", float("nan")) > check.get("majority_baseline", float("inf"))),
            metadata={k: float(check[k]) for k in ("tuned_accuracy", "tuned_accuracy_ci_low", "majority_baseline") if k in check},
        ),
        dg.AssetCheckResult(
            check_name="serving_cost_not_higher", passed=bool(tokens["tuned_mean_tokens"] <= tokens["base_mean_tokens"]), metadata=tokens
        ),
        dg.AssetCheckResult(
            check_name="reports_a_promoted_checkpoint",
            passed=bool(report["promoted"]),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"promotion_gate": report["promotion_gate"], "champion": report["champion"]},
        ),
    ]


def report_metadata(report: dict, files: dict) -> dict:
    """The report as Markdown with its plot inline, its files, and its numbers."""
    image = base64.b64encode(files["plot"].read_bytes()).decode()
    return {
        "report": dg.MetadataValue.md(files["markdown"] + f"\n![rewards and answers](data:image/png;base64,{image})\n"),
        **{k: dg.MetadataValue.path(str(files[k])) for k in ("report_json", "report_md", "plot", "published") if k in files},
        **{k: v for k, v in report.items() if isinstance(v, int | float)},
        **{k: report[k] for k in ("promotion_gate", "champion")},
        **({"why_no_lift": report["why_no_lift"]["advice"]} if "why_no_lift" in report else {}),
        **compute_precision().metadata(),
    }


@dg.asset(
    deps=[tuned_checkpoint, dg.AssetDep(raw_prompts, partition_mapping=dg.AllPartitionMapping())],
    group_name="tao",
    kinds={"mlflow", "duckdb"},
    retry_policy=TRANSIENT_RETRY,
    op_tags=gpu_step(),
    check_specs=[dg.AssetCheckSpec(name, asset="eval_report", description=text) for name, text in CHECKS.items()],
    description="Held-out prompts (never trained on) answered greedily with the plain prompt by the base model and the "
    "latest tuned checkpoint (in a round, once its promotion gate passes; materialized on its own, a report of an "
    "unpromoted checkpoint says so: `promoted`, and the check reports_a_promoted_checkpoint), scored by the pointwise "
    "scorers: mean rewards, the "
    "difference with a 95% bootstrap CI, win rate, output tokens, the categorical answer distribution and, where the "
    "domain has labels, the outside check.",
)
@stage_step
def eval_report(
    context: dg.AssetExecutionContext,
    domain: DomainResource,
    policy: PolicyResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
    artifacts: ArtifactStoreResource,
):
    db = warehouse.get()
    report, alarms, files = evaluate(db, domain, policy, mlflow, artifacts.get(), latest_checkpoint(context.instance, db, mlflow))
    return dg.MaterializeResult(metadata=report_metadata(report, files), check_results=report_checks(report, alarms))
