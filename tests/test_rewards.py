import polars as pl
import pytest

from tao_dagster.rewards import Scored, build_scorers, combine, extract_json, score_frame

TOPICS = ["card", "cash", "transfer"]
DESCRIPTIONS = {
    "card": "getting, activating or replacing a bank card and its PIN",
    "cash": "ATM cash withdrawals and wrong or missing cash",
    "transfer": "bank transfers, sending or receiving money",
}


def scorer(spec):
    return build_scorers([spec])[0]


def item(response, prompt="My new card has not arrived yet", pid="p1"):
    return Scored(pid, prompt, response)


def test_extract_json_tells_alone_from_wrapped():
    assert extract_json('{"a": 1}') == ({"a": 1}, True)
    assert extract_json('Sure! {"a": 1} Hope it helps') == ({"a": 1}, False)
    assert extract_json("no json here") == (None, False)
    assert extract_json("[1, 2]") == (None, False)


def test_json_fields_orders_good_over_wrapped_over_invalid():
    s = scorer({"kind": "json_fields", "fields": {"topic": {"allowed": TOPICS}, "reply": {"min_words": 3, "max_words": 10}}})
    good = '{"topic": "card", "reply": "Your card is on its way."}'
    wrapped = 'Here you go: {"topic": "card", "reply": "Your card is on its way."}'
    bad_value = '{"topic": "cards", "reply": "Your card is on its way."}'
    too_long = '{"topic": "card", "reply": "' + "word " * 30 + '"}'
    extra_key = '{"topic": "card", "reply": "Your card is on its way.", "mood": "happy"}'
    scores = s.score([item(t) for t in (good, wrapped, bad_value, too_long, extra_key, "I cannot help", "")])
    assert scores[0] == pytest.approx(1.0)
    assert scores[0] > scores[1] > scores[6]
    assert scores[0] > scores[2] > 0 and scores[0] > scores[3] > 0 and scores[0] > scores[4]
    assert scores[5] == scores[6] == 0.0


def test_embedding_choice_prefers_the_fitting_value():
    s = scorer({"kind": "embedding_choice", "field": "topic", "descriptions": DESCRIPTIONS})
    prompt = "The ATM gave me less cash than I asked for"
    fit, misfit, invalid = s.score(
        [item('{"topic": "cash"}', prompt), item('{"topic": "card"}', prompt), item('{"topic": "pizza"}', prompt)]
    )
    assert fit > 0.5 > misfit
    assert invalid == 0.0


def test_embedding_relevance_prefers_an_on_topic_reply():
    s = scorer({"kind": "embedding_relevance", "field": "reply"})
    on, off, missing = s.score(
        [
            item('{"reply": "Cards arrive within five working days; you can track delivery in the app."}'),
            item('{"reply": "Our office has a nice garden with tulips."}'),
            item('{"topic": "card"}'),
        ]
    )
    assert on > off
    assert missing == 0.0


def test_self_consistency_is_the_share_agreeing_within_a_prompt():
    s = scorer({"kind": "self_consistency", "field": "topic"})
    items = [
        item('{"topic": "card"}'),
        item('{"topic": "card"}'),
        item('{"topic": "cash"}'),
        item("nonsense"),
        item('{"topic": "cash"}', pid="p2"),
    ]
    assert s.score(items) == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.0, 0.0])


def test_regex_scorer_and_forbid():
    keep = scorer({"kind": "regex", "pattern": r"\bapp\b"})
    forbid = scorer({"kind": "regex", "pattern": r"(?i)password", "forbid": True})
    assert keep.score([item("use the app"), item("call us")]) == [1.0, 0.0]
    assert forbid.score([item("tell me your password"), item("fine")]) == [0.0, 1.0]


def test_versions_follow_parameters_and_unknown_kinds_fail_clearly():
    a = scorer({"kind": "regex", "pattern": "a"})
    assert a.version == scorer({"kind": "regex", "pattern": "a", "weight": 3}).version
    assert a.version != scorer({"kind": "regex", "pattern": "b"}).version
    with pytest.raises(ValueError, match="unknown kind 'oracle'"):
        build_scorers([{"name": "x", "kind": "oracle"}])


def test_combine_weights_and_normalises_per_prompt():
    scorers = build_scorers(
        [{"name": "a", "kind": "regex", "pattern": "x", "weight": 3}, {"name": "b", "kind": "regex", "pattern": "y", "weight": 1}]
    )
    items = [item("x", pid="p1"), item("y", pid="p1"), item("xy", pid="p2"), item("", pid="p2")]
    frame = score_frame(items, ["c1", "c2", "c3", "c4"], scorers)
    assert frame.height == 8 and set(frame["scorer_version"]) == {s.version for s in scorers}
    combined = combine(frame, scorers).sort("candidate_id")
    assert combined["reward"].to_list() == pytest.approx([0.75, 0.25, 1.0, 0.0])
    z = combined["reward_z"].to_list()
    assert z[0] > 0 > z[1] and z[2] > 0 > z[3]
    assert combined.filter(pl.col("prompt_id") == "p1")["reward_z"].sum() == pytest.approx(0.0, abs=1e-6)
