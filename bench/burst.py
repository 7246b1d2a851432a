"""A burst of log files in the real daemon: 200 files dropped at once into the folder `tao-dagster dev` watches.

The sensor groups the new files of a tick into score_partitions runs of at most TAO_MAX_FILES_PER_RUN partitions
(50 by default), so the engine loads once per run. Each file holds one banking query; the domain explores with one
plain sample of 8 tokens, so the time is mostly the runs' own cost (start, engine load, ingestion). Prints the
runs the sensor launched, their partitions and wall times and the time from the drop to the last score, and
writes them to bench/results/burst.json.

    .venv/bin/python bench/burst.py                       # vLLM and the embedded model: about 6 minutes on 2 cores
    .venv/bin/python bench/burst.py --max-files-per-run 1  # one run per file, as before the grouping
"""

import argparse
import json
import time

import dagster as dg
import yaml
from common import RESULTS, machine, project_home

from tao_dagster.defs.partitions import log_files
from tao_dagster.paths import PROJECT_ROOT
from tests.support.devserver import dagster_dev, wait_for

BANKING = PROJECT_ROOT / "assets" / "banking"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--max-files-per-run", type=int, default=50)
    parser.add_argument("--engine", default="vllm")
    parser.add_argument("--home", help="project home (default: a new temporary folder)")
    args = parser.parse_args()

    home = project_home(args.home, "tao-burst-")
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((BANKING / "domain.yaml").read_text())
    spec["strategies"], spec["max_tokens"] = [{"name": "plain", "temperature": 0.7, "samples": 1}], 8
    (home / "domain.yaml").write_text(yaml.safe_dump(spec))
    env = {
        "TAO_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "TAO_DOMAIN": str(home / "domain.yaml"),
        "TAO_LOGS": str(logs),
        "TAO_ENGINE": args.engine,
        "TAO_MAX_FILES_PER_RUN": str(args.max_files_per_run),
        "TAO_ROUND_MIN_NEW_PROMPTS": "1000000",  # no tuning round
    }
    queries = (BANKING / "logs" / "2026-11-02.csv").read_text().splitlines()[1:]
    with dagster_dev(env, home / "dagster-dev.log") as (_, server):
        instance = dg.DagsterInstance.from_config(str(home / "dagster"))
        dropped = time.monotonic()
        for n in range(args.files):
            (logs / f"burst-{n:03}.jsonl").write_text(json.dumps({"prompt": f"{queries[n % len(queries)]} ({n})"}) + "\n")

        def all_scored() -> bool:
            keys = instance.get_dynamic_partitions(log_files.name)
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": "new_log_files"}))
            scored = instance.get_materialized_partitions(dg.AssetKey("reward_scores"))
            return len(keys) == args.files and runs and all(r.status in FINISHED for r in runs) and len(scored) == args.files

        wait_for("all partitions scored", all_scored, 3 * 3600, server, poll=5)
        latency = time.monotonic() - dropped
        records = instance.get_run_records(dg.RunsFilter(tags={"dagster/sensor_name": "new_log_files"}), ascending=True)
    runs = [
        {
            "partitions": r.dagster_run.tags.get("tao/log_files", "1"),
            "status": r.dagster_run.status.value,
            "seconds": round(r.end_time - r.start_time, 1),
        }
        for r in records
    ]
    result = {
        "machine": machine(),
        "files": args.files,
        "max_files_per_run": args.max_files_per_run,
        "engine": args.engine,
        "runs": runs,
        "drop_to_last_score_seconds": round(latency, 1),
    }
    print(json.dumps(result, indent=2))
    (RESULTS / f"burst-{args.max_files_per_run}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
