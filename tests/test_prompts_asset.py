"""raw_prompts through Dagster: good rows go on, bad rows and broken files are quarantined, counts reconcile."""

import json

import dagster as dg
from dagster_aws.s3 import S3Resource

from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.prompts import raw_prompts
from tao_dagster.defs.resources import DomainResource, LogSourceResource, WarehouseResource

DOMAIN = "assets/banking/domain.yaml"


def test_raw_prompts_quarantines_and_reconciles(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"prompt": "Where is my card?", "category": "card_arrival"}),
                "{broken",
                json.dumps({"prompt": "Where is  my card?"}),  # duplicate after normalisation
                json.dumps({"messages": [{"role": "user", "content": "How do I top up?"}]}),
            ]
        )
    )
    (logs / "b.csv").write_text("question\nhello\n")  # no text column: the whole file is quarantined
    (logs / "c.csv").write_text('text\n"How do I top up?"\n"Can I exchange euros?"\n')  # one prompt repeats a.jsonl
    resources = {
        "domain": DomainResource(domain_file=DOMAIN, heldout_fraction=0.0),
        "logs": LogSourceResource(location=str(logs), s3=S3Resource()),
        "warehouse": WarehouseResource(path=str(tmp_path / "wh.duckdb")),
    }
    keys = ["a.jsonl", "b.csv", "c.csv", "gone.csv"]  # gone.csv: a partition whose file was removed
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(log_files.name, keys)
        tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
        result = dg.materialize([raw_prompts], instance=instance, resources=resources, tags=tags)
    assert result.success
    meta = {k: v.value for k, v in result.asset_materializations_for_node("raw_prompts")[0].metadata.items()}
    assert (meta["rows_read"], meta["accepted"], meta["duplicates"], meta["quarantined"]) == (8, 3, 2, 3)
    assert meta["rows_read"] == meta["accepted"] + meta["duplicates"] + meta["quarantined"]

    db = resources["warehouse"].get()
    quarantine = db.query("select partition, line, reason from quarantine order by partition, line").rows()
    assert quarantine[0][:2] == ("a.jsonl", 2) and quarantine[0][2].startswith("malformed JSON")
    assert quarantine[1] == ("b.csv", 0, "CSV has no column 'text' (columns: ['question'])")
    assert quarantine[2][:2] == ("gone.csv", 0) and "could not be read" in quarantine[2][2]
    prompts = db.query("select text from prompts order by text")["text"].to_list()
    assert prompts == ["Can I exchange euros?", "How do I top up?", "Where is my card?"]
    assert "card_arrival" not in json.dumps(db.query("select * from prompts").rows(), default=str)
    sources = db.query("select partition, line, duplicate from prompt_sources order by partition, line").rows()
    assert sources == [("a.jsonl", 1, False), ("a.jsonl", 3, True), ("a.jsonl", 4, False), ("c.csv", 2, True), ("c.csv", 3, False)]
