"""Held-out comparison of base and tuned models: statistics, the outside check, plots and the report.

Labels are read here and only here: they judge what label-free tuning did and never feed back.
"""

import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from tao_dagster.ingest import normalise_text
from tao_dagster.storage import write_atomically


def bootstrap_ci(values: np.ndarray, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (paired differences, or 0/1 hits)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def compare(base: np.ndarray, tuned: np.ndarray) -> dict:
    """Paired comparison of per-prompt rewards."""
    base, tuned = np.asarray(base, dtype=np.float64), np.asarray(tuned, dtype=np.float64)
    diff = tuned - base
    low, high = bootstrap_ci(diff)
    decided = diff != 0
    return {
        "n": int(diff.size),
        "base_mean_reward": float(base.mean()),
        "tuned_mean_reward": float(tuned.mean()),
        "diff": float(diff.mean()),
        "diff_ci_low": low,
        "diff_ci_high": high,
        # Ties count half, so 0.5 means no difference.
        "win_rate": float(((diff > 0).sum() + 0.5 * (~decided).sum()) / max(diff.size, 1)),
    }


def promotion_decision(comparisons: dict[str, dict]) -> tuple[bool, str]:
    """Promote only if the candidate beats every reference (base, current champion) on the held-out
    prompts with the 95% CI of the paired reward difference above zero. Returns (promote, why)."""
    verdicts = []
    for name, c in comparisons.items():
        verb = "beats" if c["diff_ci_low"] > 0 else "does not beat"
        verdicts.append(
            f"{verb} the {name}: mean reward {c['tuned_mean_reward']:.3f} vs {c['base_mean_reward']:.3f}, "
            f"diff {c['diff']:+.3f} (95% CI {c['diff_ci_low']:+.3f} .. {c['diff_ci_high']:+.3f}, n={c['n']})"
        )
    return all(c["diff_ci_low"] > 0 for c in comparisons.values()), "; ".join(verdicts)


def load_labels(path: Path, text_column: str, label_column: str, label_map: dict | None) -> dict[str, str]:
    """Map normalised prompt text to its (optionally coarsened) label."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels = {}
    for row in rows:
        label = row[label_column]
        labels[normalise_text(row[text_column])] = label_map.get(label, label) if label_map else label
    return labels


def outside_check(texts: list[str], answers: dict[str, list[str | None]], labels: dict[str, str]) -> dict:
    """Accuracy of each model's categorical answer against held-out labels, next to always guessing
    the commonest label. Prompts without a label are left out."""
    keep = [k for k, t in enumerate(texts) if normalise_text(t) in labels]
    truth = [labels[normalise_text(texts[k])] for k in keep]
    if not truth:
        return {"n_labelled": 0}
    commonest, count = Counter(truth).most_common(1)[0]
    result = {"n_labelled": len(truth), "majority_label": commonest, "majority_baseline": count / len(truth)}
    for model, values in answers.items():
        hits = np.array([values[k] == t for k, t in zip(keep, truth)], dtype=np.float64)
        low, high = bootstrap_ci(hits)
        result[f"{model}_accuracy"] = float(hits.mean())
        result[f"{model}_accuracy_ci_low"] = low
        result[f"{model}_accuracy_ci_high"] = high
    return result


def answer_distribution(values: list[str | None], top: int = 8) -> dict[str, float]:
    counts = Counter("(none)" if v is None else v for v in values)
    return {k: c / max(len(values), 1) for k, c in counts.most_common(top)}


def plot_report(base: np.ndarray, tuned: np.ndarray, distributions: dict[str, dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(0, 1, 21)
    ax1.hist(base, bins=bins, alpha=0.6, label=f"base (mean {np.mean(base):.2f})")
    ax1.hist(tuned, bins=bins, alpha=0.6, label=f"tuned (mean {np.mean(tuned):.2f})")
    ax1.set_xlabel("reward on held-out prompts")
    ax1.set_ylabel("prompts")
    ax1.legend()
    keys = sorted({k for d in distributions.values() for k in d})
    x = np.arange(len(keys))
    width = 0.8 / max(len(distributions), 1)
    for i, (model, dist) in enumerate(distributions.items()):
        ax2.bar(x + i * width, [dist.get(k, 0) for k in keys], width, label=model)
    short = [k if len(k) <= 18 else k[:16] + ".." for k in keys]  # free-text answers can be long
    ax2.set_xticks(x + width * (len(distributions) - 1) / 2, short, rotation=30, ha="right")
    ax2.set_ylabel("share of answers")
    ax2.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=90)
    plt.close(fig)
    return write_atomically(path, image.getvalue())


class Markdown(str):
    """Text meant to be shown as Markdown (a stage's summary table, say), wherever it is shown."""


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0])

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_report(report: dict, strategy_rows: list[dict], out_dir: Path) -> tuple[Path, Path, str]:
    """Write report.json and report.md; return their paths and the Markdown text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    headline = [
        {"metric": "mean reward", "base": report["base_mean_reward"], "tuned": report["tuned_mean_reward"]},
        {"metric": "mean output tokens", "base": report["base_mean_tokens"], "tuned": report["tuned_mean_tokens"]},
    ]
    check = report.get("outside_check", {})
    if check.get("n_labelled"):
        headline.append({"metric": "outside check: accuracy", "base": check["base_accuracy"], "tuned": check["tuned_accuracy"]})
    promotion = (
        f"Promoted (promotion gate: {report['promotion_gate']}); the champion is {report['champion']}."
        if report["promoted"]
        else f"**Not promoted**: the promotion gate {'failed' if report['promotion_gate'] == 'failed' else 'has not run'} for this "
        f"checkpoint and the champion is {report['champion']}. This report describes a checkpoint that does not serve."
    )
    md = [
        f"# TAO eval report: checkpoint {report['checkpoint_id']}",
        "",
        promotion,
        "",
        f"Held-out test prompts: {report['n']} (never used for generation, rewards, training or the promotion decision).",
        "",
        markdown_table(headline),
        "",
        f"Reward difference (tuned - base): **{report['diff']:+.3f}**, 95% bootstrap CI "
        f"[{report['diff_ci_low']:+.3f}, {report['diff_ci_high']:+.3f}]; win rate {report['win_rate']:.2f} (ties count half).",
    ]
    if "best_of_n_mean_reward" in report:
        md += [
            "",
            f"The ceiling being distilled, best-of-N of the parent on the same prompts: mean reward "
            f"{report['best_of_n_mean_reward']:.3f}; the tuned model keeps {report['distillation_ratio']:.2f} of its gain "
            "over the base (the distillation ratio).",
        ]
    if check.get("n_labelled"):
        md += [
            "",
            f"Outside check on {check['n_labelled']} labelled prompts: tuned accuracy {check['tuned_accuracy']:.3f} "
            f"(95% CI [{check['tuned_accuracy_ci_low']:.3f}, {check['tuned_accuracy_ci_high']:.3f}]), base "
            f"{check['base_accuracy']:.3f}, always answering the commonest label ({check['majority_label']}) "
            f"{check['majority_baseline']:.3f}."
            + (f" The reward's own zero-shot choice: {check['reward_choice_accuracy']:.3f}." if "reward_choice_accuracy" in check else ""),
        ]
    if versus := report.get("vs_production"):
        md += [
            "",
            f"Against production's own replies ({', '.join(versus['production_models']) or 'model unknown'}), on the "
            f"{versus['n']} of these prompts a log holds one for: mean reward production {versus['production_mean_reward']:.3f}, "
            f"tuned {versus['tuned_mean_reward']:.3f}, difference {versus['diff']:+.3f} (95% CI [{versus['diff_ci_low']:+.3f}, "
            f"{versus['diff_ci_high']:+.3f}]), win rate {versus['win_rate']:.2f}.",
        ]
    if "why_no_lift" in report:
        md += ["", f"**No lift.** {report['why_no_lift']['advice']}."]
    for model, dist in report["answer_distribution"].items():  # empty when the domain names no answer field
        md += ["", f"Answer distribution, {model}: " + ", ".join(f"{k} {v:.0%}" for k, v in dist.items())]
    md += ["", "## Reward hacking alarms", "", markdown_table(report["alarms"]) if report["alarms"] else "None."]
    md += ["", "## Candidates per exploration strategy", "", markdown_table(strategy_rows)]
    text = "\n".join(md) + "\n"
    json_path = write_atomically(out_dir / "report.json", json.dumps(report, indent=2))
    return json_path, write_atomically(out_dir / "report.md", text), text
