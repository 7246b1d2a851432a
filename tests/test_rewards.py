import json
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from tao_dagster.domain import load_domain
from tao_dagster.rewards import SCORERS, Scored, build_scorers, combine, extract_json, score_frame
from tao_dagster.rewards.reference import COMMAND, reference

ROOT = Path(__file__).parents[1]

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


GOOD = '{"topic": "card", "reply": "Your card is on its way and should arrive within five working days."}'
SCHEMA = {
    "type": "object",
    "properties": {"topic": {"enum": TOPICS}, "reply": {"type": "string", "minLength": 10}},
    "required": ["topic", "reply"],
    "additionalProperties": False,
}


def test_json_schema_orders_valid_over_wrapped_over_invalid(tmp_path):
    wrong_topic = '{"topic": "pizza", "reply": "Your card is on its way."}'
    responses = [GOOD, f"Sure! {GOOD}", wrong_topic, '{"topic": "card"}', "Your card is coming."]
    inline = scorer({"kind": "json_schema", "schema": SCHEMA})
    assert inline.score([item(r) for r in responses]) == [1.0, 0.5, 0.0, 0.0, 0.0]
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    spec = {"kind": "json_schema", "schema_file": "schema.json", "wrapped_score": 0.2}  # relative to the domain file
    from_file = build_scorers([spec], root=tmp_path)[0]
    assert from_file.score([item(r) for r in responses[:2]]) == [1.0, 0.2]
    path.write_text(json.dumps({**SCHEMA, "required": ["topic"]}))  # a changed schema file is a new version
    assert build_scorers([spec], root=tmp_path)[0].version != from_file.version


def test_json_schema_refuses_a_broken_schema():
    with pytest.raises(ValueError, match=r"scorer 's' \(json_schema\): not a valid JSON Schema: 'strange' is not valid"):
        build_scorers([{"name": "s", "kind": "json_schema", "schema": {"type": "strange"}}])
    with pytest.raises(ValueError, match=r"needs one of schema \(inline\) or schema_file"):
        build_scorers([{"name": "s", "kind": "json_schema"}])


def test_length_is_one_within_bounds_and_falls_smoothly_outside():
    words = {n: item(" ".join(["word"] * n)) for n in (0, 2, 4, 10, 20, 40)}
    smooth = scorer({"kind": "length", "min": 4, "max": 10})
    assert smooth.score(list(words.values())) == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.5, 0.25])
    step = scorer({"kind": "length", "min": 4, "max": 10, "smooth": False})
    assert step.score(list(words.values())) == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    chars = scorer({"kind": "length", "max": 20, "unit": "chars", "field": "reply"})
    short, long_, missing = chars.score([item('{"reply": "On its way."}'), item(GOOD), item('{"topic": "card"}')])
    assert short == 1.0 > long_ > 0.0 == missing
    with pytest.raises(ValueError, match=r"needs 0 <= min <= max"):
        scorer({"kind": "length", "min": 10, "max": 4})


def test_terms_score_is_the_share_of_rules_satisfied():
    s = scorer({"kind": "terms", "required": ["app", "working days"], "forbidden": ["guarantee"]})
    scores = s.score(
        [
            item("Track it in the App: it arrives within five working   days."),  # any case, any spacing
            item("Track it in the app. We guarantee it arrives."),
            item("Happy to help: we GUARANTEE delivery."),  # "app" is not a word of "happy"
        ]
    )
    assert scores == pytest.approx([1.0, 1 / 3, 0.0])
    assert scorer({"kind": "terms", "forbidden": ["sorry"], "field": "reply"}).score([item('{"topic": "card"}')]) == [0.0]
    with pytest.raises(ValueError, match=r"required and forbidden must be lists of terms"):
        scorer({"kind": "terms", "required": "sorry"})  # a string would otherwise be read as one term per letter


SCORER_MODULE = """
def mentions_days(items):
    return [1.0 if "days" in i.response else 0.0 for i in items]
"""


def test_python_callable_scores_and_is_versioned_by_its_source(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(tmp_path)
    (tmp_path / "my_scorers.py").write_text(SCORER_MODULE)
    spec = {"kind": "python", "callable": "my_scorers:mentions_days"}
    first = scorer(spec)
    assert first.score([item(GOOD), item("soon")]) == [1.0, 0.0]
    (tmp_path / "my_scorers.py").write_text(SCORER_MODULE.replace('"days"', '"soon"'))
    monkeypatch.delitem(sys.modules, "my_scorers")
    edited = scorer(spec)
    assert edited.version != first.version
    assert edited.score([item(GOOD), item("soon")]) == [0.0, 1.0]


def test_python_callable_failures_name_the_scorer(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"scorer 'mine' \(python\): cannot import 'no_such_module:f': ModuleNotFoundError"):
        build_scorers([{"name": "mine", "kind": "python", "callable": "no_such_module:f"}])
    with pytest.raises(ValueError, match=r"scorer 'mine' \(python\): callable must look like 'package.module:function'"):
        build_scorers([{"name": "mine", "kind": "python", "callable": "json.dumps"}])
    monkeypatch.syspath_prepend(tmp_path)
    (tmp_path / "short_scorers.py").write_text("def one(items):\n    return [1.0]\n")
    with pytest.raises(RuntimeError, match=r"must return one finite score per item \(got 1 for 2 items\)"):
        scorer({"kind": "python", "callable": "short_scorers:one"}).score([item("a"), item("b")])


def test_self_consistency_extractors():
    numbers = scorer({"kind": "self_consistency", "extract": "last_number"})
    worked = ["12 + 988 = 1,000", "so the total is 1000.0", "I think 999", "no idea"]
    assert numbers.score([item(t) for t in worked]) == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.0])
    regex = scorer({"kind": "self_consistency", "extract": "regex", "pattern": r"(?i)answer:\s*(\w+)"})
    answers = ["Answer: cash. Final answer: card", "answer: card", "answer: cash", "no answer here"]
    assert regex.score([item(t) for t in answers]) == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.0])
    with pytest.raises(ValueError, match=r"extract: regex needs the parameter pattern"):
        scorer({"kind": "self_consistency", "extract": "regex"})


def test_self_consistency_on_a_json_field_keeps_its_version():
    # The version before extractors existed: scores already stored for it stay current.
    assert scorer({"kind": "self_consistency", "field": "topic"}).version == "f8dcc74f"


def test_a_misspelt_or_mistyped_parameter_names_the_scorer_its_kind_and_the_parameter():
    typo = r"scorer 'fit' \(embedding_choice\) needs the parameter\(s\) field; unknown parameter 'feild', did you mean 'field'\?"
    with pytest.raises(ValueError, match=typo):
        build_scorers([{"name": "fit", "kind": "embedding_choice", "feild": "topic", "descriptions": DESCRIPTIONS}])
    with pytest.raises(ValueError, match=r"scorer 'regex' \(regex\): unknown parameter 'colour' \(the parameters of regex: pattern, forb"):
        scorer({"kind": "regex", "pattern": "a", "colour": "red"})
    with pytest.raises(ValueError, match=r"scorer 'json_fields' \(json_fields\): unknown setting 'fields.reply.max_word'"):
        scorer({"kind": "json_fields", "fields": {"reply": {"max_word": 5}}})
    # Strict types: a quoted "10" in YAML is not a number, nor "yes" a boolean.
    with pytest.raises(ValueError, match=r"scorer 'length' \(length\): max should be a valid number, not '10'"):
        scorer({"kind": "length", "max": "10"})
    with pytest.raises(ValueError, match=r"scorer 'regex' \(regex\): forbid should be a valid boolean, not 'yes'"):
        scorer({"kind": "regex", "pattern": "a", "forbid": "yes"})


def test_a_domain_file_with_a_misspelt_scorer_parameter_fails_to_load(tmp_path):
    spec = yaml.safe_load((ROOT / "assets" / "banking" / "domain.yaml").read_text())
    fit = next(s for s in spec["scorers"] if s["name"] == "topic_fit")
    fit["temprature"] = fit.pop("temperature")
    (tmp_path / "domain.yaml").write_text(yaml.safe_dump(spec))
    message = r"domain file .*domain.yaml: scorer 'topic_fit' \(embedding_choice\): unknown parameter 'temprature', did you mean 'temp"
    with pytest.raises(ValueError, match=message):
        load_domain(tmp_path / "domain.yaml")


def test_the_scorer_reference_is_generated_from_the_parameter_models():
    undocumented = [f"{kind}.{name}" for kind, cls in SCORERS.items() for name, f in cls.Params.model_fields.items() if not f.description]
    assert not undocumented, f"parameters without a description: {undocumented}"
    assert (ROOT / "docs" / "scorers.md").read_text() == reference(), f"docs/scorers.md is stale: regenerate it with `{COMMAND}`"
