"""The second demo domain (assets/hwu64): it loads, its logs are clean unlabeled traffic, its outside check covers
them, and its labels reach nothing but the evaluation. `make demo DOMAIN=hwu64` runs it in its own home."""

import json
import re
import subprocess

import pytest

from tao_dagster.cli import example_logs
from tao_dagster.domain import load_domain
from tao_dagster.evaluation import load_labels
from tao_dagster.ingest import normalise_text, parse_log_file, prompt_id
from tao_dagster.paths import PROJECT_ROOT

FOLDER = PROJECT_ROOT / "assets" / "hwu64"
DOMAIN_FILE = FOLDER / "domain.yaml"
SCENARIOS = ["alarm", "audio", "calendar", "cooking", "datetime", "email", "general", "iot", "lists", "music", "news", "play"]
SCENARIOS += ["qa", "recommendation", "social", "takeaway", "transport", "weather"]


@pytest.fixture(scope="module")
def domain():
    return load_domain(DOMAIN_FILE)


@pytest.fixture(scope="module")
def log_texts() -> list[str]:
    texts = []
    for path in sorted((FOLDER / "logs").iterdir()):
        parsed = parse_log_file(path)
        assert parsed.bad == [] and len(parsed.rows) == 100, path
        texts += [row.messages[-1]["content"] for row in parsed.rows]
    return texts


def test_the_domain_loads_with_its_scenarios_as_allowed_values(domain):
    by_kind = {s["kind"]: s for s in domain.scorers}
    assert set(by_kind) == {"json_fields", "embedding_choice", "embedding_relevance", "self_consistency"}
    assert by_kind["json_fields"]["fields"]["scenario"]["allowed"] == SCENARIOS
    assert sorted(by_kind["embedding_choice"]["descriptions"]) == SCENARIOS
    assert domain.evaluation["answer_field"] == "scenario" and domain.evaluation["label_column"] == "scenario"


def test_the_logs_are_500_distinct_prompts_all_labelled_for_the_outside_check(domain, log_texts):
    assert len({prompt_id([{"role": "user", "content": t}]) for t in log_texts}) == 500
    ev = domain.evaluation
    labels = load_labels(domain.resolve(ev["labels"]), ev["text_column"], ev["label_column"], None)
    assert all(normalise_text(t) in labels for t in log_texts)
    assert set(labels.values()) <= set(SCENARIOS)


def test_the_domain_file_holds_no_label_derived_text(log_texts):
    """Written from the scenario names alone: no intent names (scenario_action), no logged command copied in."""
    text = DOMAIN_FILE.read_text().lower()
    assert re.findall(rf"\b(?:{'|'.join(SCENARIOS)})_[a-z]", text) == []
    assert [t for t in log_texts if len(t.split()) >= 3 and normalise_text(t.lower()) in normalise_text(text)] == []


def test_generation_and_scoring_never_name_the_labels(domain):
    generation = [domain.instruction, domain.plain_template, *domain.snippets.values()]
    generation += [part for s in domain.strategies for part in (s.template, s.response_prefix)]
    for text in [*generation, json.dumps(domain.scorers)]:
        assert "labels" not in text and "eval/" not in text


def test_the_demo_logs_follow_a_demo_domain(monkeypatch, tmp_path):
    monkeypatch.setenv("TAO_DOMAIN", "assets/hwu64/domain.yaml")
    assert example_logs() == FOLDER / "logs"
    monkeypatch.setenv("TAO_DOMAIN", str(tmp_path / "domain.yaml"))  # a user's own domain: banking's, as before
    assert example_logs() == PROJECT_ROOT / "assets" / "banking" / "logs"
    monkeypatch.delenv("TAO_DOMAIN")
    assert example_logs() == PROJECT_ROOT / "assets" / "banking" / "logs"


def make_demo(*args: str) -> str:
    """The demo's command line as `make` would run it."""
    command = ["make", "--no-print-directory", "-n", "demo", *args]  # also under `make test`, which CI runs
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[-1]


def test_make_demo_gives_another_domain_its_own_home():
    assert make_demo() == ".venv/bin/tao-dagster demo"
    home = f"${{TAO_HOME:-{PROJECT_ROOT}/.tao_home/hwu64}}"
    assert make_demo("DOMAIN=hwu64") == f"TAO_DOMAIN={DOMAIN_FILE} TAO_HOME={home} .venv/bin/tao-dagster demo"
