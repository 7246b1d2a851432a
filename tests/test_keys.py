import re
from pathlib import Path

import pytest

from tao_dagster.domain import load_domain
from tao_dagster.pipeline.candidates import candidate_id
from tao_dagster.storage import partition_key

DEMO_DOMAIN = Path(__file__).parents[1] / "assets" / "banking" / "domain.yaml"


def test_candidate_key_covers_policy_strategy_settings_and_index():
    base = candidate_id("p1", "base:m", "plain", "t=0.7", 0)
    assert base == candidate_id("p1", "base:m", "plain", "t=0.7", 0)
    others = [
        candidate_id("p2", "base:m", "plain", "t=0.7", 0),
        candidate_id("p1", "ckpt:abc", "plain", "t=0.7", 0),
        candidate_id("p1", "base:m", "few_shot", "t=0.7", 0),
        candidate_id("p1", "base:m", "plain", "t=0.3", 0),
        candidate_id("p1", "base:m", "plain", "t=0.7", 1),
    ]
    assert len({base, *others}) == 6


def test_partition_keys_are_sanitised_and_never_shared():
    assert partition_key("2026-11-02.csv") == "2026-11-02.csv"
    odd = partition_key("day 1 'prod'.jsonl")
    assert odd.startswith("day_1__prod_-") and odd.endswith(".jsonl") and len(odd) == len("day_1__prod_-123456.jsonl")
    assert partition_key("a/b.csv") != partition_key("a_b.csv") == "a_b.csv"
    assert partition_key("2026/11/07.jsonl") != partition_key("2026/11_07.jsonl")
    # The whole log suffix stays at the end, so the S3 copy named after the key is still read as gzipped JSON Lines.
    assert re.fullmatch(r"gateway_2026-11-02-[0-9a-f]{6}\.jsonl\.gz", partition_key("gateway/2026-11-02.jsonl.gz"))


def test_demo_domain_strategies_and_plain_prompt():
    domain = load_domain(DEMO_DOMAIN)
    keys = [(s.name, s.settings_key()) for s in domain.strategies]
    assert len(set(keys)) == len(keys) >= 3
    assert len({s.name for s in domain.strategies}) >= 3
    plain = domain.strategy_request([{"role": "user", "content": "Where is my card?"}], domain.plain_strategy())
    assert plain.sampling.temperature == 0 and plain.response_prefix == ""
    assert plain.messages[-1]["content"].endswith("Message: Where is my card?")
    assert domain.instruction.strip() in plain.messages[-1]["content"]


def test_bad_domain_file_names_the_file(tmp_path):
    bad = tmp_path / "domain.yaml"
    bad.write_text("name: x\nstrategies: []\n")
    with pytest.raises(ValueError, match=r"domain file .*domain.yaml: missing or malformed setting"):
        load_domain(bad)
