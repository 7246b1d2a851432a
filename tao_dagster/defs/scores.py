"""reward_scores: every candidate scored by the domain's label-free scorers, combined per prompt."""

import dagster as dg
import polars as pl

from tao_dagster.defs.candidates import candidate_responses
from tao_dagster.defs.deploy import cpu_step
from tao_dagster.defs.partitions import prompt_partition_asset
from tao_dagster.defs.resources import DomainResource, WarehouseResource
from tao_dagster.diagnostics import Alarm, alarm_rows, calibrate, candidate_alarms, per_scorer, scorer_agreement, spearman
from tao_dagster.evaluation import markdown_table
from tao_dagster.hardware import compute_precision
from tao_dagster.rewards import Scored, Scorer, combine, score_frame
from tao_dagster.warehouse import Warehouse


def current_scores(db: Warehouse, scorers: list[Scorer], partitions: list[str] | None = None) -> pl.DataFrame:
    """Scores by the current version of each scorer, of the candidates in these partitions (all if None)."""
    current = pl.DataFrame({"scorer": [s.name for s in scorers], "scorer_version": [s.version for s in scorers]})
    where = "" if partitions is None else "where c.partition in (select unnest(?))"
    return db.query(
        f"""select s.candidate_id, s.prompt_id, s.scorer, s.scorer_version, s.score
            from scores s join candidates c using (candidate_id) {where}""",
        [] if partitions is None else [partitions],
    ).join(current, on=["scorer", "scorer_version"])


def candidate_rewards(db: Warehouse, scorers: list[Scorer], partitions: list[str] | None = None) -> pl.DataFrame:
    """Candidates with their combined reward under the current scorer versions (all partitions if None)."""
    where = "" if partitions is None else "where c.partition in (select unnest(?))"
    candidates = db.query(
        f"""select c.candidate_id, c.prompt_id, c.partition, c.policy_version, c.strategy, c.sampling,
                   c.response, c.completion_tokens, p.messages, p.text
            from candidates c join prompts p using (prompt_id) {where}""",
        [] if partitions is None else [partitions],
    )
    return candidates.join(combine(current_scores(db, scorers, partitions), scorers), on=["candidate_id", "prompt_id"])


def score_missing(db: Warehouse, scorers: list[Scorer], partitions: list[str]) -> dict[str, int]:
    """Score what lacks a score from the current version of each scorer; group scorers redo whole prompts."""
    candidates = db.query(
        """select c.candidate_id, c.prompt_id, c.response, p.text
           from candidates c join prompts p using (prompt_id) where c.partition in (select unnest(?))""",
        [partitions],
    )
    done = db.query("select candidate_id, scorer, scorer_version from scores")
    written = {}
    for scorer in scorers:
        have = set(done.filter((pl.col("scorer") == scorer.name) & (pl.col("scorer_version") == scorer.version))["candidate_id"])
        todo = candidates.filter(~pl.col("candidate_id").is_in(list(have)))
        if scorer.group and todo.height:
            todo = candidates.filter(pl.col("prompt_id").is_in(todo["prompt_id"].unique().to_list()))
        if todo.height:
            items = [Scored(pid, text, response) for pid, text, response in todo.select("prompt_id", "text", "response").iter_rows()]
            db.upsert("scores", score_frame(items, todo["candidate_id"].to_list(), [scorer]))
        written[scorer.name] = todo.height
    return written


NO_HACKING_ALARMS = "no_reward_hacking_alarms"


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
def reward_scores(context: dg.AssetExecutionContext, domain: DomainResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
    spec = domain.load()
    scorers = spec.build_scorers()
    db = warehouse.get()
    keys = list(context.partition_keys)
    written = score_missing(db, scorers, keys)
    context.log.info(f"scores written per scorer: {written}")

    rewards = candidate_rewards(db, scorers, keys)
    scores = current_scores(db, scorers, keys)
    per_prompt = rewards.group_by("prompt_id").agg(pl.col("reward").mean().alias("mean"), pl.col("reward").max().alias("best"))
    per_strategy = (
        rewards.group_by("strategy", "sampling")
        .agg(
            pl.len().alias("candidates"),
            pl.col("reward").mean().alias("mean_reward"),
            (pl.col("reward_z") > 0).mean().alias("above_prompt_mean"),
        )
        .sort("mean_reward", descending=True)
    )
    gold = {}
    if spec.calibration.get("gold"):
        gold = calibrate(pl.read_csv(spec.resolve(spec.calibration["gold"])), scorers)
        context.log.info(f"gold set: {gold}")
    alarms = candidate_alarms(rewards, spec.evaluation.get("answer_field"), spec.diagnostics)
    for alarm in alarms:
        context.log.warning(f"reward hacking alarm {alarm.name}: {alarm.message}")
    return dg.MaterializeResult(
        metadata={
            "candidates": rewards.height,
            "scores_written": sum(written.values()),
            "mean_reward": float(rewards["reward"].mean() or 0.0),
            "mean_best_of_n": float(per_prompt["best"].mean() or 0.0),
            "reward_length_correlation": spearman(rewards["reward"], rewards["completion_tokens"]),
            "per_scorer": dg.MetadataValue.md(markdown_table(per_scorer(scores).to_dicts())),
            "scorer_agreement": dg.MetadataValue.md(markdown_table(scorer_agreement(scores).to_dicts())),
            "per_strategy": dg.MetadataValue.md(markdown_table(per_strategy.to_dicts())),
            "alarms": dg.MetadataValue.md(markdown_table(alarm_rows(alarms)) if alarms else "none"),
            **({"gold_agreement": dg.MetadataValue.json(gold)} if gold else {}),
            **compute_precision().metadata(),  # of the scorers that run a model
        },
        check_results=[hacking_check(alarms)],
    )


def hacking_check(alarms: list[Alarm]) -> dg.AssetCheckResult:
    """A warning, not a block: an alarm asks a human to look at the top responses."""
    return dg.AssetCheckResult(
        check_name=NO_HACKING_ALARMS,
        passed=not alarms,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"alarms": dg.MetadataValue.json(alarm_rows(alarms))},
    )
