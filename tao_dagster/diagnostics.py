"""Can the reward be trusted? Diagnostics of the label-free scores, and alarms for reward hacking.

A policy optimised against a reward finds the reward's blind spots: one answer for every prompt, one value
of a categorical field everywhere, repetition, or length the reward happens to like. These checks look for
those patterns in the best-scored candidates (what training would teach) and in a model's answers.
"""

import re
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import polars as pl

from tao_dagster.ingest import normalise_text
from tao_dagster.rewards import Scored, Scorer, combine, extract_field, score_frame
from tao_dagster.training.pairs import best_candidates

# Default thresholds; a domain overrides them under `diagnostics:` in its YAML.
THRESHOLDS = {
    "shared_top_response": 0.2,  # share of prompts whose best candidate is word-for-word another prompt's best
    "one_value": 0.6,  # share of best candidates (or answers) giving the same value of the answer field
    "repetition": 0.1,  # share of best candidates (or answers) that repeat themselves
    "length_correlation": 0.5,  # rank correlation of reward with response length
    "length_growth": 1.5,  # tuned answers this many times longer than the base's while the reward rose
}


@dataclass(frozen=True)
class Alarm:
    name: str
    value: float
    threshold: float
    message: str


def spearman(x, y) -> float:
    """Rank correlation over the pairs with both values (production's replies have no token counts); NaN when either
    side is constant (it then carries no ordering)."""
    both = pl.DataFrame({"x": pl.Series(x), "y": pl.Series(y)}).drop_nulls()
    x, y = both["x"].rank().to_numpy(), both["y"].rank().to_numpy()
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def per_scorer(scores: pl.DataFrame) -> pl.DataFrame:
    """Each scorer's distribution; a scorer stuck at 0 or 1 for nearly everything tells candidates apart badly."""
    return (
        scores.group_by("scorer")
        .agg(
            pl.len().alias("n"),
            pl.col("score").mean().alias("mean"),
            pl.col("score").std().alias("std"),
            pl.col("score").quantile(0.1).alias("p10"),
            pl.col("score").median().alias("p50"),
            pl.col("score").quantile(0.9).alias("p90"),
            (pl.col("score") <= 0).mean().alias("share_0"),
            (pl.col("score") >= 1).mean().alias("share_1"),
        )
        .sort("scorer")
    )


def scorer_agreement(scores: pl.DataFrame) -> pl.DataFrame:
    """Rank correlation between every two scorers over the candidates both scored: scorers that disagree
    everywhere measure different things, or one of them is broken."""
    wide = scores.pivot(on="scorer", index="candidate_id", values="score", aggregate_function="mean")
    names = sorted(c for c in wide.columns if c != "candidate_id")
    rows = []
    for a, b in combinations(names, 2):
        both = wide.select(a, b).drop_nulls()
        rows.append({"scorers": f"{a} ~ {b}", "spearman": spearman(both[a], both[b]), "n": both.height})
    return pl.DataFrame(rows, schema={"scorers": pl.String, "spearman": pl.Float64, "n": pl.Int64})


def repeats_itself(text: str) -> bool:
    """Degenerate repetition: some three-word phrase three times or more, or few distinct words in a long text."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < 12:
        return False
    trigrams = [" ".join(words[i : i + 3]) for i in range(len(words) - 2)]
    most = max(trigrams.count(t) for t in set(trigrams))
    return most >= 3 or len(set(words)) / len(words) < 0.3


def _answer_alarms(texts: list[str], field: str | None, limits: dict, what: str) -> list[Alarm]:
    alarms = []
    if field:
        values = [v for v in (extract_field(t, field) for t in texts) if v is not None]
        if values:
            top, count = max(((v, values.count(v)) for v in set(values)), key=lambda vc: vc[1])
            share = count / len(texts)
            if share > limits["one_value"]:
                alarms.append(Alarm("one_value", share, limits["one_value"], f"{share:.0%} of {what} give {field}={top!r}"))
    repeated = sum(map(repeats_itself, texts)) / max(len(texts), 1)
    if repeated > limits["repetition"]:
        alarms.append(Alarm("repetition", repeated, limits["repetition"], f"{repeated:.0%} of {what} repeat themselves"))
    return alarms


def candidate_alarms(rewards: pl.DataFrame, field: str | None, thresholds: dict | None = None) -> list[Alarm]:
    """Alarms on scored candidates (`rewards`: prompt_id, candidate_id, response, reward, completion_tokens)."""
    limits = {**THRESHOLDS, **(thresholds or {})}
    best = best_candidates(rewards)  # training's chosen answers, ties broken the same way
    texts = best["response"].to_list()
    normalised = [normalise_text(t).lower() for t in texts]
    shared = sum(normalised.count(t) > 1 for t in normalised) / max(len(texts), 1)
    alarms = []
    if shared > limits["shared_top_response"]:
        alarms.append(
            Alarm(
                "shared_top_response",
                shared,
                limits["shared_top_response"],
                f"{shared:.0%} of prompts share their best candidate word for word with another prompt",
            )
        )
    alarms += _answer_alarms(texts, field, limits, "best candidates")
    corr = spearman(rewards["reward"], rewards["completion_tokens"])
    if corr > limits["length_correlation"]:
        alarms.append(
            Alarm("length_correlation", corr, limits["length_correlation"], f"reward rises with length (rank correlation {corr:.2f})")
        )
    return alarms


def answer_alarms(base: pl.DataFrame, tuned: pl.DataFrame, reward_diff: float, field: str | None, thresholds: dict | None = None):
    """Alarms on a tuned model's held-out answers (`response`, `completion_tokens`) against the base model's."""
    limits = {**THRESHOLDS, **(thresholds or {})}
    alarms = _answer_alarms(tuned["response"].to_list(), field, limits, "tuned answers")
    growth = float(tuned["completion_tokens"].mean()) / max(float(base["completion_tokens"].mean()), 1e-9)
    if reward_diff > 0 and growth > limits["length_growth"]:
        alarms.append(
            Alarm("length_growth", growth, limits["length_growth"], f"reward rose while answers grew {growth:.1f}x longer than the base's")
        )
    return alarms


def alarm_rows(alarms: list[Alarm]) -> list[dict]:
    return [asdict(a) for a in alarms]


def calibrate(gold: pl.DataFrame, scorers: list[Scorer]) -> dict:
    """Agreement of the reward with a small human-scored gold set (`prompt`, `response`, `score`), and the
    non-negative scorer weights that would agree best (least squares), scaled to the same total weight.
    The weights are a suggestion to copy into the domain file: changing them is a configuration change."""
    from scipy.optimize import nnls

    ids = [f"g{k}" for k in range(gold.height)]
    items = [Scored(normalise_text(p), p, r) for p, r in gold.select("prompt", "response").iter_rows()]
    scores = score_frame(items, ids, scorers)
    in_gold_order = pl.col("candidate_id").replace_strict({cid: k for k, cid in enumerate(ids)})
    current = combine(scores, scorers).sort(in_gold_order)["reward"].to_numpy()
    wide = scores.pivot(on="scorer", index="candidate_id", values="score").fill_null(0.0).sort(in_gold_order)
    names = [s.name for s in scorers]
    matrix, target = wide.select(names).to_numpy(), gold["score"].to_numpy().astype(float)
    fitted, _ = nnls(matrix, target)
    total = sum(s.weight for s in scorers)
    fitted = fitted * total / fitted.sum() if fitted.sum() > 0 else np.array([s.weight for s in scorers])
    return {
        "gold_items": gold.height,
        "spearman_current_weights": spearman(current, target),
        "spearman_fitted_weights": spearman(matrix @ fitted, target),
        "current_weights": {s.name: s.weight for s in scorers},
        "fitted_weights": {n: round(float(w), 3) for n, w in zip(names, fitted)},
    }
