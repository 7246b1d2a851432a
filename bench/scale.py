"""Ingestion at scale: synthetic chat-completions logs of 100k, 1M and 10M lines, each ingested as one partition.

Each log holds unique prompts (banking questions with an order number and a few words each, 100 to 300
characters) behind a system turn, with the logged reply, and a bad line every 10,007 lines (a line cut short, or a
record of another shape). Each size is ingested in a fresh process into a fresh warehouse, through
`ingest_partition` with the banking domain's window check on the embedded model's tokenizer, so the peak RSS
(ru_maxrss of that process) is the size's own. Per size: lines, file MB, seconds, lines/s, accepted and
quarantined rows, whether the counts reconcile, peak RSS, the RSS before ingesting (imports and tokenizer loaded)
and the machine's load at the end; then candidate planning on the warehouse just filled (bench/planning.py's
measure_planning: the counts and the first generation chunk of requests).
Prints a table; JSON in bench/results/scale.json.

    .venv/bin/python bench/scale.py                      # 100k, 1M and 10M lines, in a temporary folder
    .venv/bin/python bench/scale.py --lines 100000 --home /tmp/scale
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import print_table, project_home, write_result

from tao_dagster.paths import PROJECT_ROOT

SIZES = [100_000, 1_000_000, 10_000_000]
BANKING = PROJECT_ROOT / "assets" / "banking"
BAD_EVERY = 10_007
WORDS = [
    "please",
    "today",
    "urgent",
    "again",
    "card",
    "account",
    "transfer",
    "payment",
    "app",
    "help",
    "still",
    "yesterday",
    "online",
    "abroad",
    "fee",
]


def banking_questions() -> list[str]:
    return [
        line.strip().strip('"')
        for path in sorted((BANKING / "logs").glob("*.csv"))
        for line in path.read_text().splitlines()[1:]
        if line.strip()
    ]


def write_log(path: Path, lines: int) -> None:
    """`lines` chat-completions records of unique prompts, a bad line every BAD_EVERY lines."""
    questions, rng = banking_questions(), random.Random(0)
    with path.open("w") as out:
        for n in range(1, lines + 1):
            if n % BAD_EVERY == 0:
                out.write('{"request": {"messages": [{"role": "user", "content": "cut sh\n' if n % 2 else '{"input": "no request"}\n')
                continue
            words = " ".join(rng.choices(WORDS, k=rng.randint(2, 20)))
            prompt = f"Order {n}: {rng.choice(questions)} {words}."[:300]
            record = {
                "request": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "system", "content": "You are a bank's support assistant."}, {"role": "user", "content": prompt}],
                },
                "response": {
                    "id": f"chatcmpl-{n}",
                    "created": 1764547200 + n,
                    "choices": [{"message": {"role": "assistant", "content": "card_arrival"}}],
                },
            }
            out.write(json.dumps(record) + "\n")


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def ingest_step(run: dict) -> dict:
    from tao_dagster.pipeline.prompts import ingest_partition, reconciles

    start = time.perf_counter()
    counts = ingest_partition(run["db"], "scale.jsonl", run["log"], run["settings"].domain, run["window"])
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 1),
        "lines_per_s": round(run["lines"] / seconds),
        "accepted": counts["accepted"],
        "quarantined": counts["quarantined"],
        "reconciles": reconciles(counts),
    }


def plan_step(run: dict) -> dict:
    from planning import POLICY_VERSION, measure_planning

    planned = measure_planning(run["settings"].warehouse_path, BANKING / "domain.yaml", POLICY_VERSION)
    return {"plan_seconds": planned["plan_seconds"], "candidates_planned": planned["to_generate"]}


STEPS = [ingest_step, plan_step]  # run in order in the size's own process, each adding its columns


def measure(home: Path, log: Path, lines: int) -> dict:
    """In this (fresh) process: the steps on `log`, then the peak RSS."""
    import os

    from tao_dagster.context_window import window_check
    from tao_dagster.settings import core_settings
    from tao_dagster.warehouse import Warehouse

    os.environ["TAO_HOME"] = str(home)
    settings = core_settings(home, {"domain": {"domain_file": str(BANKING / "domain.yaml")}})
    run = {"settings": settings, "log": log, "lines": lines, "db": Warehouse(settings.warehouse_path)}
    run["window"] = window_check(settings.domain.load(), settings.policy)
    row, before = {}, rss_gib()
    for step in STEPS:
        row |= step(run)
    return row | {"peak_rss_gib": round(rss_gib(), 2), "rss_before_gib": round(before, 2), "load_average_1m": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", nargs="+", type=int, default=SIZES, help="the sizes of the logs, in lines")
    parser.add_argument("--home", help="folder for the logs and project homes (default: a new temporary one)")
    parser.add_argument("--measure", nargs=3, metavar=("HOME", "LOG", "LINES"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure:
        home, log, lines = args.measure
        print(json.dumps(measure(Path(home), Path(log), int(lines))))
        return
    root, rows = project_home(args.home, "tao-bench-scale-"), []
    for lines in args.lines:
        rows.append({"lines": lines, **measure_size(root, lines)})
        print(rows[-1], flush=True)
        write_result("scale", {"rows": rows})  # after each size: a long run keeps what it measured
    print_table(rows, "ingestion at scale: one partition of unique chat-completions prompts, a fresh process per size")


def measure_size(root: Path, lines: int) -> dict:
    """The log of `lines` lines (written once, kept under `root`) measured in a fresh process and warehouse."""
    log = root / "logs" / f"scale-{lines}.jsonl"
    if not log.exists():
        log.parent.mkdir(parents=True, exist_ok=True)
        write_log(log, lines)
    home = project_home(str(root / f"home-{lines}"), "")
    for stale in home.glob("warehouse.duckdb*"):
        stale.unlink()
    child = subprocess.run(
        [sys.executable, __file__, "--measure", str(home), str(log), str(lines)], check=True, capture_output=True, text=True
    )
    return {"file_mb": round(log.stat().st_size / 1e6), **json.loads(child.stdout.splitlines()[-1])}


if __name__ == "__main__":
    main()
