"""`strategies: auto`: exploration derived from the scorers, deterministic, and a domain's own strategies kept as they were."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tao_dagster.domain import load_domain
from tao_dagster.pipeline.candidates import candidate_id

BANKING = Path(__file__).parents[1] / "assets" / "banking" / "domain.yaml"
TOPICS = ["card", "payment", "cash", "transfer", "top_up", "exchange", "account"]


def write_domain(tmp_path, strategies, scorers) -> Path:
    path = tmp_path / "domain.yaml"
    spec = {
        "name": "t",
        "instruction": "Answer.",
        "plain_template": "{instruction}\n{prompt}",
        "strategies": strategies,
        "scorers": scorers,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # field order matters: the prefixes follow it
    return path


def conversation(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def prefixes(domain, name: str, text: str = "Where is my card?") -> list[str]:
    return [domain.strategy_request(conversation(text), s).response_prefix for s in domain.strategies if s.name == name]


def test_banking_scorers_give_a_format_prefix_and_a_sweep_over_the_seven_topics(tmp_path):
    banking = yaml.safe_load(BANKING.read_text())
    domain = load_domain(write_domain(tmp_path, "auto", banking["scorers"]))
    assert [s.name for s in domain.strategies] == ["plain", "format_prefix", *["topic_sweep"] * 7]
    assert prefixes(domain, "plain") == [""] and prefixes(domain, "format_prefix") == ['{"topic": "']
    hand_written = next(s["response_prefixes"] for s in banking["strategies"] if s["name"] == "topic_sweep")
    assert prefixes(domain, "topic_sweep") == hand_written == [f'{{"topic": "{t}", "reply": "' for t in TOPICS]
    assert sum(s.samples for s in domain.strategies) == 11


def test_json_fields_alone_with_allowed_values_gets_its_sweep(tmp_path):
    scorers = [{"name": "format", "kind": "json_fields", "fields": {"intent": {"allowed": ["alarm", "music", "weather"]}}}]
    domain = load_domain(write_domain(tmp_path, "auto", scorers))
    assert prefixes(domain, "format_prefix") == ['{"intent": "']
    # The only field: the sweep gives the whole answer and the scorers choose.
    assert prefixes(domain, "intent_sweep") == ['{"intent": "alarm"}', '{"intent": "music"}', '{"intent": "weather"}']


def test_the_sweep_takes_the_field_embedding_choice_reads(tmp_path):
    fields = {"urgency": {"allowed": ["low", "high"]}, "topic": {"allowed": ["card", "cash"]}}
    scorers = [{"name": "format", "kind": "json_fields", "fields": fields}]
    assert [s.name for s in load_domain(write_domain(tmp_path, "auto", scorers)).strategies][-1] == "urgency_sweep"
    scorers.append({"name": "fit", "kind": "embedding_choice", "field": "topic", "descriptions": {"card": "cards", "cash": "ATMs"}})
    domain = load_domain(write_domain(tmp_path, "auto", scorers))
    assert prefixes(domain, "topic_sweep") == ['{"topic": "card", "urgency": "', '{"topic": "cash", "urgency": "']


def test_free_text_domains_get_plain_and_a_format_prefix_only_where_the_answer_is_json(tmp_path):
    json_answer = [{"name": "format", "kind": "json_fields", "fields": {"answer": {"min_words": 3}}}]
    domain = load_domain(write_domain(tmp_path, "auto", json_answer))
    assert [(s.name, s.response_prefix) for s in domain.strategies] == [("plain", ""), ("format_prefix", '{"answer": "')]
    text_answer = [{"name": "brief", "kind": "length", "max": 40}, {"name": "polite", "kind": "terms", "required": ["sorry"]}]
    assert [s.name for s in load_domain(write_domain(tmp_path, "auto", text_answer)).strategies] == ["plain"]


def test_schema_order_enum_and_types_and_values_every_scorer_allows(tmp_path):
    schema = {"type": "object", "properties": {"intent": {"enum": ["a", "b", "c"]}, "count": {"type": "integer"}}}
    scorers = [
        {"name": "schema", "kind": "json_schema", "schema": schema},
        {"name": "fit", "kind": "embedding_choice", "field": "intent", "descriptions": {"c": "cee", "b": "bee", "z": "zed"}},
    ]
    domain = load_domain(write_domain(tmp_path, "auto", scorers))
    assert prefixes(domain, "format_prefix") == ['{"intent": "']
    assert prefixes(domain, "intent_sweep") == ['{"intent": "b", "count": ', '{"intent": "c", "count": ']


def test_auto_beside_the_domains_own_strategies(tmp_path):
    scorers = [{"name": "format", "kind": "json_fields", "fields": {"answer": {}}}]
    own = {"name": "careful", "template": "{instruction}\nThink first.\n{prompt}", "temperature": 0.3}
    domain = load_domain(write_domain(tmp_path, [{"auto": {"sweep_cap": 3}}, own], scorers))
    assert [s.name for s in domain.strategies] == ["plain", "format_prefix", "careful"]
    with pytest.raises(ValueError, match="two strategies share a name"):
        load_domain(write_domain(tmp_path, ["auto", "auto"], scorers))
    with pytest.raises(
        ValueError, match=r"domain file .*: strategies: auto: sweep_cop: Extra inputs are not permitted \(the settings of auto: sweep_cap\)"
    ):
        load_domain(write_domain(tmp_path, [{"auto": {"sweep_cop": 3}}], scorers))


def test_a_capped_sweep_draws_a_fixed_subset_per_prompt(tmp_path):
    values = [f"v{k:02d}" for k in range(20)]
    scorers = [{"name": "format", "kind": "json_fields", "fields": {"label": {"allowed": values}, "why": {}}}]
    path = write_domain(tmp_path, [{"auto": {"sweep_cap": 5}}], scorers)
    domain = load_domain(path)
    sweep = [s for s in domain.strategies if s.name == "label_sweep"]
    assert len(sweep) == 5 and len({s.settings_key() for s in sweep}) == 5
    texts = [f"request {k}" for k in range(40)]
    drawn = {t: prefixes(domain, "label_sweep", t) for t in texts}
    assert all(len(set(d)) == 5 and set(d) <= {f'{{"label": "{v}", "why": "' for v in values} for d in drawn.values())
    assert drawn == {t: prefixes(load_domain(path), "label_sweep", t) for t in texts}  # the same on every load
    assert len({tuple(d) for d in drawn.values()}) > 30  # prompts differ in what they sweep
    assert {p for d in drawn.values() for p in d} == {f'{{"label": "{v}", "why": "' for v in values}  # every value is tried
    with pytest.raises(ValueError, match="per_prompt must be"):
        load_domain(write_domain(tmp_path, [{"name": "s", "temperature": 0.5, "response_prefixes": ["a", "b"], "per_prompt": 0}], scorers))


def test_banking_own_strategies_keep_their_candidate_ids():
    """The candidate ids and requests of the demo's hand-written strategies, as they were before `auto` existed."""
    domain = load_domain(BANKING)
    rows = []
    for s in domain.strategies:
        for index in range(s.samples):
            request = domain.strategy_request(conversation("Where is my card?"), s)
            rows.append(
                [candidate_id("p1", "base:m", s.name, s.settings_key(), index), request.messages, request.response_prefix, s.sampling.key()]
            )
    assert len(rows) == 11
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16] == "fdf84019a54793b8"
