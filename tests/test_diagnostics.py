"""Trust diagnostics: they flag what reward hacking looks like, and stay quiet on healthy scores."""

import json
import math
import random

import polars as pl
import pytest

from tao_dagster.diagnostics import answer_alarms, calibrate, candidate_alarms, per_scorer, repeats_itself, scorer_agreement, spearman
from tao_dagster.rewards import Scored, Scorer, combine, score_frame
from tao_dagster.training import TrainSettings, build_pairs

TOPICS = ["card", "cash", "transfer", "payment"]


class LengthScorer(Scorer):
    """A planted broken scorer: longer is better, whatever is said."""

    kind = "planted_length"

    def score(self, items):
        return [min(len(i.response.split()) / 40, 1.0) for i in items]


class TopicScorer(Scorer):
    """A sound one for contrast: the answer names the prompt's own topic."""

    kind = "planted_topic"

    def score(self, items):
        return [float(f'"{i.prompt.split()[-1]}"' in i.response) for i in items]


def candidates(seed: int = 0) -> tuple[list[str], list[Scored], list[int]]:
    """Four answers per prompt, of varied lengths; the prompt's last word is its topic."""
    rng = random.Random(seed)
    ids, items, tokens = [], [], []
    for p in range(40):
        topic = TOPICS[p % 4]
        for c in range(4):
            said = topic if c % 2 == 0 else rng.choice(TOPICS)
            reply = " ".join(rng.choice(["please", "check", "the", "app", "for", "details", "now"]) for _ in range(rng.randint(3, 30)))
            response = json.dumps({"topic": said, "reply": reply})
            ids.append(f"p{p}c{c}")
            items.append(Scored(f"p{p}", f"question about {topic}", response))
            tokens.append(len(response.split()))
    return ids, items, tokens


def rewards_under(scorer: Scorer) -> tuple[pl.DataFrame, pl.DataFrame]:
    ids, items, tokens = candidates()
    scores = score_frame(items, ids, [scorer])
    rewards = combine(scores, [scorer]).join(
        pl.DataFrame({"candidate_id": ids, "response": [i.response for i in items], "completion_tokens": tokens}), on="candidate_id"
    )
    return scores, rewards


def test_a_planted_length_hacking_scorer_is_flagged_and_a_sound_one_is_not():
    _, hacked = rewards_under(LengthScorer("length"))
    assert [a.name for a in candidate_alarms(hacked, "topic")] == ["length_correlation"]
    _, sound = rewards_under(TopicScorer("topic"))
    assert candidate_alarms(sound, "topic") == []


def test_one_value_taking_over_and_shared_top_responses():
    rows = [
        {"prompt_id": f"p{p}", "candidate_id": f"p{p}c{c}", "reward": float(c == 0), "completion_tokens": 10, "response": text}
        for p in range(10)
        for c, text in enumerate(['{"topic": "card", "reply": "We are on it."}', f'{{"topic": "cash", "reply": "Case {p}"}}'])
    ]
    names = {a.name for a in candidate_alarms(pl.DataFrame(rows), "topic")}
    assert names == {"shared_top_response", "one_value"}


def test_answer_alarms_on_the_tuned_model():
    base = pl.DataFrame({"response": ['{"topic": "cash"}', '{"topic": "card"}'] * 5, "completion_tokens": [10] * 10})
    tuned = pl.DataFrame({"response": ['{"topic": "card", "reply": "' + "go go go go " * 5 + '"}'] * 10, "completion_tokens": [40] * 10})
    assert {a.name for a in answer_alarms(base, tuned, reward_diff=0.2, field="topic")} == {"one_value", "repetition", "length_growth"}
    assert answer_alarms(base, base, reward_diff=0.0, field="topic") == []


def test_repetition_and_spearman():
    assert repeats_itself("thank you " * 10) and not repeats_itself("Your card will arrive within five working days, please wait.")
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == 1.0
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])), "a constant side carries no ordering"


def test_per_scorer_and_agreement_tables():
    ids, items, _ = candidates()
    scores = score_frame(items, ids, [LengthScorer("length"), TopicScorer("topic")])
    table = per_scorer(scores)
    assert table["scorer"].to_list() == ["length", "topic"] and table["n"].to_list() == [160, 160]
    agreement = scorer_agreement(scores)
    assert agreement["scorers"].to_list() == ["length ~ topic"] and abs(agreement["spearman"][0]) < 0.3


def test_calibration_against_a_gold_set_finds_the_scorer_that_agrees():
    ids, items, _ = candidates(seed=1)
    scorers = [LengthScorer("length", weight=2.0), TopicScorer("topic", weight=1.0)]
    # Human judges who care about the topic only.
    gold = pl.DataFrame(
        {
            "prompt": [i.prompt for i in items],
            "response": [i.response for i in items],
            "score": [float(f'"{i.prompt.split()[-1]}"' in i.response) for i in items],
        }
    )
    result = calibrate(gold, scorers)
    assert result["gold_items"] == 160 and result["current_weights"] == {"length": 2.0, "topic": 1.0}
    assert result["fitted_weights"]["topic"] > 2.5 and result["fitted_weights"]["length"] < 0.5
    assert result["spearman_fitted_weights"] > 0.9 > result["spearman_current_weights"]


def test_the_alarms_inspect_the_candidate_training_chooses_on_a_tie():
    """Two best candidates per prompt tie on reward: training chooses the shorter one, which here repeats itself,
    so the repetition alarm must look at that one, not at the longer one a candidate_id order would pick."""
    rows = []
    for p in range(10):
        longer = f"Case {p}: your replacement card was posted today and should reach your address within five working days."
        rows += [
            {"prompt_id": f"p{p}", "candidate_id": f"p{p}a", "reward": 1.0, "response": longer},
            {"prompt_id": f"p{p}", "candidate_id": f"p{p}b", "reward": 1.0, "response": f"case {p} " + "go go go " * 4},
            {"prompt_id": f"p{p}", "candidate_id": f"p{p}c", "reward": 0.0, "response": "no"},
        ]
    rewards = pl.DataFrame(rows).with_columns(completion_tokens=pl.lit(10))
    chosen = build_pairs(rewards, TrainSettings())["chosen_id"].to_list()
    assert chosen == [f"p{p}b" for p in range(10)]
    assert [a.name for a in candidate_alarms(rewards, None)] == ["repetition"]


def test_a_domain_chooses_which_alarms_block_promotion():
    from tao_dagster.diagnostics import Alarm
    from tao_dagster.errors import StageError
    from tao_dagster.pipeline.promotion import blocking_alarms

    alarms = [Alarm("one_value", 0.8, 0.6, "80% answer card"), Alarm("repetition", 0.2, 0.1, "20% repeat themselves")]
    assert blocking_alarms(alarms, {}) == [], "by default an alarm only warns"
    assert blocking_alarms(alarms, {"block_promotion_on": ["one_value"]}) == alarms[:1]
    with pytest.raises(StageError, match="not alarms"):
        blocking_alarms(alarms, {"block_promotion_on": ["one_valeu"]})
