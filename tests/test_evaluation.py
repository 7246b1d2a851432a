import json

import numpy as np
import pytest

from tao_dagster.evaluation import answer_distribution, bootstrap_ci, compare, outside_check, plot_report, write_report


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.2, 1, 50), rng.normal(0.2, 1, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < hi_s - lo_s
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)


def test_compare_paired_rewards():
    base = np.array([0.0, 0.5, 0.5, 1.0])
    tuned = np.array([1.0, 0.5, 1.0, 0.0])
    report = compare(base, tuned)
    assert report["n"] == 4
    assert report["diff"] == pytest.approx(0.125)
    assert report["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert report["diff_ci_low"] <= report["diff"] <= report["diff_ci_high"]


def test_outside_check_against_majority_baseline():
    texts = ["a", "b", "c", "d", "unlabelled"]
    labels = {"a": "card", "b": "card", "c": "cash", "d": "transfer"}
    answers = {"base": ["card", "card", "card", "card", "card"], "tuned": ["card", "card", "cash", "transfer", None]}
    check = outside_check(texts, answers, labels)
    assert check["n_labelled"] == 4
    assert check["majority_label"] == "card" and check["majority_baseline"] == 0.5
    assert check["base_accuracy"] == 0.5 and check["tuned_accuracy"] == 1.0


def test_report_files(tmp_path):
    report = {
        "checkpoint_id": "abc",
        **{"promoted": True, "promotion_gate": "passed", "champion": "ckpt:abc"},
        **compare(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.2])),
        "base_mean_tokens": 30.0,
        "tuned_mean_tokens": 25.0,
        "answer_distribution": {
            "base": answer_distribution(["card", "card", None]),
            "tuned": answer_distribution(["card", "cash", "cash"]),
        },
        "outside_check": {"n_labelled": 0},
        "alarms": [{"name": "one_value", "value": 0.9, "threshold": 0.6, "message": "90% of tuned answers give topic='card'"}],
    }
    json_path, md_path, text = write_report(report, [{"strategy": "plain", "mean_reward": 0.4}], tmp_path)
    saved = json.loads(json_path.read_text())
    for key in ("base_mean_reward", "tuned_mean_reward", "diff", "diff_ci_low", "diff_ci_high", "win_rate", "n"):
        assert key in saved
    assert "| plain | 0.400 |" in md_path.read_text() and text == md_path.read_text()
    assert "90% of tuned answers give topic='card'" in text
    assert "Promoted (promotion gate: passed); the champion is ckpt:abc." in text and "Not promoted" not in text
    refused = {**report, "promoted": False, "promotion_gate": "failed", "champion": "base:tiny"}
    _, _, text = write_report(refused, [], tmp_path)
    assert text.splitlines()[2] == (
        "**Not promoted**: the promotion gate failed for this checkpoint and the champion is base:tiny. "
        "This report describes a checkpoint that does not serve."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"], "no temporary file is left"
    assert report["answer_distribution"]["base"] == {"card": pytest.approx(2 / 3), "(none)": pytest.approx(1 / 3)}
    png = plot_report(np.array([0.1, 0.2]), np.array([0.5, 0.6]), report["answer_distribution"], tmp_path / "r.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
