"""eval_report: base and tuned models answer the held-out prompts; did label-free tuning help?"""

import base64
import json

import dagster as dg
import polars as pl

from tao_dagster.defs.checkpoint import latest_checkpoint, tuned_checkpoint
from tao_dagster.defs.deploy import gpu_step
from tao_dagster.defs.heldout import answer_rewards, heldout_answers, heldout_prompts, pointwise_scorers
from tao_dagster.defs.policy import base_policy
from tao_dagster.defs.prompts import raw_prompts
from tao_dagster.defs.resources import (
    TRANSIENT_RETRY,
    ArtifactStoreResource,
    DomainResource,
    MlflowResource,
    PolicyResource,
    WarehouseResource,
    stops_when_interrupted,
    tao_home,
)
from tao_dagster.defs.scores import NO_HACKING_ALARMS, candidate_rewards, hacking_check
from tao_dagster.diagnostics import alarm_rows, answer_alarms
from tao_dagster.evaluation import answer_distribution, compare, load_labels, outside_check, plot_report, write_report
from tao_dagster.hardware import compute_precision
from tao_dagster.rewards import extract_field


@dg.asset(
    deps=[tuned_checkpoint, dg.AssetDep(raw_prompts, partition_mapping=dg.AllPartitionMapping())],
    group_name="tao",
    kinds={"mlflow", "duckdb"},
    retry_policy=TRANSIENT_RETRY,
    op_tags=gpu_step(),
    check_specs=[
        dg.AssetCheckSpec(
            NO_HACKING_ALARMS,
            asset="eval_report",
            description="Warns when the tuned answers look like reward hacking: one field value for most prompts, "
            "repetition, or a reward that rose while the answers grew much longer.",
        ),
        dg.AssetCheckSpec(
            "tuned_beats_base", asset="eval_report", description="Held-out mean reward: the 95% CI of tuned - base lies above 0."
        ),
        dg.AssetCheckSpec(
            "outside_check_beats_majority",
            asset="eval_report",
            description="Tuned accuracy against held-out labels beats always answering the commonest label.",
        ),
        dg.AssetCheckSpec(
            "serving_cost_not_higher",
            asset="eval_report",
            description="The tuned model's answers are no longer on average than the base model's.",
        ),
    ],
    description="Held-out prompts (never trained on) answered greedily with the plain prompt by the base model and the "
    "latest tuned checkpoint (once its promotion gate passes), scored by the pointwise scorers: mean rewards, the "
    "difference with a 95% bootstrap CI, win rate, output tokens, the categorical answer distribution and, where the "
    "domain has labels, the outside check.",
)
@stops_when_interrupted
def eval_report(
    context: dg.AssetExecutionContext,
    domain: DomainResource,
    policy: PolicyResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
    artifacts: ArtifactStoreResource,
):
    spec = domain.load()
    db = warehouse.get()
    tuned_policy = latest_checkpoint(context.instance, db, mlflow)
    ckpt = tuned_policy.checkpoint_id
    checkpoint = db.query("select * from checkpoints where checkpoint_id = ?", [ckpt]).row(0, named=True)

    prompts = heldout_prompts(db, domain)
    base = heldout_answers(db, spec, policy, base_policy(policy), prompts)
    tuned = heldout_answers(db, spec, policy, tuned_policy, prompts)
    all_scorers = spec.build_scorers()
    scorers = pointwise_scorers(all_scorers)
    rewards = {"base": answer_rewards(base, scorers), "tuned": answer_rewards(tuned, scorers)}
    report = {"checkpoint_id": ckpt, "parent": checkpoint["parent"], **compare(rewards["base"], rewards["tuned"])}
    report["base_mean_tokens"] = float(base["completion_tokens"].mean())
    report["tuned_mean_tokens"] = float(tuned["completion_tokens"].mean())
    report["eval_scorers"] = [s.name for s in scorers]

    field = spec.evaluation.get("answer_field")
    answers = {m: [extract_field(r, field) for r in f["response"]] for m, f in (("base", base), ("tuned", tuned))} if field else {}
    report["answer_distribution"] = {m: answer_distribution(a) for m, a in answers.items()}
    alarms = answer_alarms(base, tuned, report["diff"], field, spec.diagnostics)
    report["alarms"] = alarm_rows(alarms)
    if field and spec.evaluation.get("labels"):
        ev = spec.evaluation
        label_map = json.loads(spec.resolve(ev["label_map"]).read_text()) if ev.get("label_map") else None
        labels = load_labels(spec.resolve(ev["labels"]), ev.get("text_column", "text"), ev.get("label_column", "label"), label_map)
        report["outside_check"] = outside_check(base["text"].to_list(), answers, labels)

    strategy_rows = (
        candidate_rewards(db, all_scorers)
        .filter(pl.col("policy_version") == checkpoint["parent"])
        .group_by("strategy", "sampling")
        .agg(
            pl.len().alias("candidates"),
            pl.col("reward").mean().alias("mean_reward"),
            pl.col("completion_tokens").mean().alias("mean_tokens"),
        )
        .sort("mean_reward", descending=True)
        .to_dicts()
    )
    report["candidates_per_strategy"] = strategy_rows
    out_dir = tao_home() / "reports" / ckpt
    json_path, md_path, markdown = write_report(report, strategy_rows, out_dir)
    plot = plot_report(rewards["base"], rewards["tuned"], report["answer_distribution"], out_dir / "report.png")

    numbers = {k: v for k, v in report.items() if isinstance(v, (int, float))}
    with mlflow.start_run(run_id=checkpoint["mlflow_run_id"]):
        import mlflow as mlf

        mlf.log_metrics({f"eval_{k}": v for k, v in numbers.items()})
        for k, v in report.get("outside_check", {}).items():
            if isinstance(v, (int, float)):
                mlf.log_metric(f"eval_outside_{k}", v)
        for path in (json_path, md_path, plot):
            mlf.log_artifact(str(path), artifact_path="eval")

    published = artifacts.publish(out_dir, "reports")
    check = report.get("outside_check", {})
    image = base64.b64encode(plot.read_bytes()).decode()
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(markdown + f"\n![rewards and answers](data:image/png;base64,{image})\n"),
            "report_json": dg.MetadataValue.path(str(json_path)),
            "report_md": dg.MetadataValue.path(str(md_path)),
            "plot": dg.MetadataValue.path(str(plot)),
            **({"published": dg.MetadataValue.path(published)} if published else {}),
            **numbers,
            **compute_precision().metadata(),
        },
        check_results=[
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
                check_name="serving_cost_not_higher",
                passed=bool(report["tuned_mean_tokens"] <= report["base_mean_tokens"]),
                metadata={"base_mean_tokens": report["base_mean_tokens"], "tuned_mean_tokens": report["tuned_mean_tokens"]},
            ),
        ],
    )
