"""The eval report: base and tuned models answer the held-out prompts; did label-free tuning help?"""

import json

import numpy as np
import polars as pl

from tao_dagster.diagnostics import Alarm, alarm_rows, answer_alarms
from tao_dagster.domain import Domain, DomainSettings
from tao_dagster.evaluation import answer_distribution, compare, load_labels, outside_check, plot_report, write_report
from tao_dagster.paths import tao_home
from tao_dagster.pipeline.diagnosis import why_no_lift
from tao_dagster.pipeline.heldout import answer_rewards, best_of_n, heldout_answers, heldout_prompts, on_common_prompts, pointwise_scorers
from tao_dagster.pipeline.scores import policy_rewards
from tao_dagster.policies import Policy, PolicySettings, base_policy, champion_checkpoint, checkpoint_version, policy_of_version
from tao_dagster.rewards import Scorer, extract_field
from tao_dagster.storage import ArtifactStore
from tao_dagster.tracking import Tracking
from tao_dagster.warehouse import Warehouse


def labelled_check(spec: Domain, texts: list[str], answers: dict[str, list]) -> dict | None:
    """Accuracy against the domain's held-out labels, if it has any: read here, by evaluation alone."""
    ev = spec.evaluation
    if not (answers and ev.get("labels")):
        return None
    label_map = json.loads(spec.resolve(ev["label_map"]).read_text()) if ev.get("label_map") else None
    labels = load_labels(spec.resolve(ev["labels"]), ev.get("text_column", "text"), ev.get("label_column", "label"), label_map)
    return outside_check(texts, answers, labels)


def strategy_table(db: Warehouse, spec: Domain, parent: str) -> list[dict]:
    """How the parent's candidates scored per exploration strategy: which strategies the round learnt from."""
    return (
        policy_rewards(db, spec.build_scorers(), parent)
        .group_by("strategy", "sampling")
        .agg(
            pl.len().alias("candidates"),
            pl.col("reward").mean().alias("mean_reward"),
            pl.col("completion_tokens").mean().alias("mean_tokens"),
        )
        .sort("mean_reward", descending=True)
        .to_dicts()
    )


def reward_choices(spec: Domain, texts: list[str]) -> list[str] | None:
    """The reward's own zero-shot answer for each prompt, where an embedding_choice scorer scores the answer field:
    the value it would rate highest. A tuned model that merely matches it has distilled the reward's classifier."""
    field = spec.evaluation.get("answer_field")
    chooser = next((s for s in spec.build_scorers() if s.kind == "embedding_choice" and s.params.field == field), None)
    return chooser.choose(texts) if chooser else None


def ceiling(best_reward: np.ndarray, base: np.ndarray, tuned: np.ndarray) -> dict:
    """Best-of-N of the parent on the test prompts, and how much of its gain over the base the tuned model kept."""
    gap = float(best_reward.mean() - base.mean())
    return {
        "best_of_n_mean_reward": float(best_reward.mean()),
        "distillation_ratio": float((tuned.mean() - base.mean()) / gap) if gap > 0 else float("nan"),
    }


def promotion_status(db: Warehouse, settings: PolicySettings, tracking: Tracking, tuned: Policy) -> dict:
    """Whether the reported checkpoint was promoted (its gate passed, or the champion alias is on it: a rollback),
    its gate's verdict as tagged on its model version, and the champion now: a report of a checkpoint that does not
    serve says so."""
    champion = champion_checkpoint(db, tracking)
    gate = tracking.version_tag(tuned.model_version, "promotion_gate") or "not run"
    return {
        "promoted": gate == "passed" or champion == tuned.checkpoint_id,
        "promotion_gate": gate,
        "champion": checkpoint_version(champion) if champion else settings.base_version(),
    }


def versus_production(db: Warehouse, answered: pl.DataFrame, tuned: np.ndarray, scorers: list[Scorer]) -> dict | None:
    """The tuned model against the replies production gave, on the held-out test prompts a log holds one for (the
    model users got is the baseline that matters most); None when no log had replies."""
    production = db.production_replies(answered["prompt_id"].to_list())
    if production.height == 0:
        return None
    production = production.rename({"reply": "response"}).join(answered.select("prompt_id", "text"), on="prompt_id").sort("prompt_id")
    versus = compare(answer_rewards(production, scorers), tuned[answered["prompt_id"].is_in(production["prompt_id"].to_list()).to_numpy()])
    versus["production_mean_reward"] = versus.pop("base_mean_reward")
    return versus | {"production_models": sorted(set(production["model"].drop_nulls()))}


def evaluate(
    db: Warehouse, domain: DomainSettings, settings: PolicySettings, tracking: Tracking, artifacts: ArtifactStore, tuned: Policy
) -> tuple[dict, list[Alarm], dict]:
    """Answer the held-out test prompts (which no decision reads) with the base and the tuned model (promoted or not:
    the report says which, see promotion_status), compare them
    with each other and with the parent's best-of-N, write report.json/.md and a plot, and log them to the
    checkpoint's MLflow run. Returns (the report, its alarms, the files written)."""
    spec = domain.load()
    checkpoint = db.checkpoint(tuned.checkpoint_id)
    prompts = heldout_prompts(db, domain, "test")
    base, answered, best = on_common_prompts(
        heldout_answers(db, spec, settings, base_policy(settings), prompts),
        heldout_answers(db, spec, settings, tuned, prompts),
        best_of_n(db, spec, settings, policy_of_version(db, settings, tracking, checkpoint["parent"]), prompts),
    )
    scorers = pointwise_scorers(spec.build_scorers())
    rewards = {name: answer_rewards(frame, scorers) for name, frame in (("base", base), ("tuned", answered), ("best_of_n", best))}
    report = {"checkpoint_id": tuned.checkpoint_id, "parent": checkpoint["parent"], **promotion_status(db, settings, tracking, tuned)}
    report |= compare(rewards["base"], rewards["tuned"])
    report |= ceiling(rewards["best_of_n"], rewards["base"], rewards["tuned"])
    if versus := versus_production(db, answered, rewards["tuned"], scorers):
        report["vs_production"] = versus
    report["base_mean_tokens"] = float(base["completion_tokens"].mean())
    report["tuned_mean_tokens"] = float(answered["completion_tokens"].mean())
    report["eval_scorers"] = [s.name for s in scorers]
    field = spec.evaluation.get("answer_field")
    frames = (("base", base), ("tuned", answered), ("best_of_n", best))
    answers = {m: [extract_field(r, field) for r in f["response"]] for m, f in frames} if field else {}
    report["answer_distribution"] = {m: answer_distribution(a) for m, a in answers.items()}
    alarms = answer_alarms(base, answered, report["diff"], field, spec.diagnostics)
    report["alarms"] = alarm_rows(alarms)
    if answers and (choices := reward_choices(spec, base["text"].to_list())):
        answers["reward_choice"] = choices
    check = labelled_check(spec, base["text"].to_list(), answers)
    if check is not None:
        report["outside_check"] = check
    if report["diff_ci_low"] <= 0:
        report["why_no_lift"] = why_no_lift(db, spec, checkpoint)
    report["candidates_per_strategy"] = strategy_table(db, spec, checkpoint["parent"])
    out_dir = tao_home() / "reports" / tuned.checkpoint_id
    json_path, md_path, markdown = write_report(report, report["candidates_per_strategy"], out_dir)
    plot = plot_report(rewards["base"], rewards["tuned"], report["answer_distribution"], out_dir / "report.png")
    with tracking.start_run(run_id=checkpoint["mlflow_run_id"]):
        import mlflow

        mlflow.log_metrics({f"eval_{k}": v for k, v in report.items() if isinstance(v, int | float)})
        for name, prefix in (("outside_check", "eval_outside_"), ("vs_production", "eval_production_")):
            mlflow.log_metrics({f"{prefix}{k}": v for k, v in report.get(name, {}).items() if isinstance(v, int | float)})
        for path in (json_path, md_path, plot):
            mlflow.log_artifact(str(path), artifact_path="eval")
    files = {"report_json": json_path, "report_md": md_path, "plot": plot, "markdown": markdown}
    published = artifacts.publish(out_dir, "reports")
    return report, alarms, {**files, **({"published": published} if published else {})}
