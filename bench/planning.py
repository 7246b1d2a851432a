"""Candidate planning at scale: how long the candidates stage takes to know what to generate for N training prompts,
and the memory it needs, on a warehouse filled directly with synthetic prompts (one user turn each, stored as
ingestion stores them) of which a share already has its candidates from the policy.

Each size and domain is measured in a fresh process (so its peak RSS is its own): `plan` is plan_candidates'
one counting query plus the first generation chunk (2048 candidates, requests rendered), which is what the stage
waits for before it generates; `full pass` reads every planned candidate in batches and renders each request, as
generation does chunk by chunk over its whole run (its cost is spread over hours of generation, and its memory is
one batch). `old` is the code before batching, all at once: every training prompt, a Python set of every
candidate id of the policy and every request rendered (skipped above --old-max prompts).

    .venv/bin/python bench/planning.py                                    # 100k and 1M prompts: about 6 minutes on 2 cores
    .venv/bin/python bench/planning.py --sizes 100000 1000000 10000000    # and 10M (no full pass): about 18 minutes

measure_planning(db_path, domain_yaml, policy_version) measures a warehouse filled some other way (bench/scale.py's).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_table, write_result

from tao_dagster.domain import DomainSettings
from tao_dagster.generation import EngineSettings
from tao_dagster.paths import PROJECT_ROOT
from tao_dagster.pipeline.candidates import plan_candidates, plan_requests, samples_of
from tao_dagster.warehouse import Warehouse

DOMAINS = {name: PROJECT_ROOT / "assets" / name / "domain.yaml" for name in ("banking", "hwu64")}
POLICY_VERSION = "base:bench"
CHUNK = EngineSettings().generation_chunk
ASKS = ["Where is my card", "Why was I charged twice for", "How do I top up with", "Cancel the transfer of", "What is the rate for"]


def rss_mib() -> float:
    """This process's resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM): not ru_maxrss, which in a child of fork and exec also counts the
    parent's resident memory at the fork (a bench that has just filled a 10M-prompt warehouse holds 4 GiB)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def training_partitions(db: Warehouse) -> list[str]:
    return db.query("select distinct first_partition from prompts where not heldout order by 1")["first_partition"].to_list()


def measure_planning(db_path: str | Path, domain_yaml: str | Path, policy_version: str, full_pass: bool = False) -> dict:
    """Plan the candidates of every training prompt of the warehouse for the domain, as the candidates stage does:
    seconds to the counts and the first generation chunk, and (with `full_pass`) to read and render every planned
    candidate. RSS is this process's: call it in a fresh process for a peak of its own."""
    spec = DomainSettings(domain_file=str(domain_yaml)).load()
    db = Warehouse(db_path)
    partitions = training_partitions(db)
    rss_before = rss_mib()
    began = time.perf_counter()
    prompts, to_generate, todo = plan_candidates(db, spec, policy_version, partitions)
    counted = time.perf_counter() - began
    first_chunk = sum(1 for _, _ in zip(range(CHUNK), todo))
    result = {
        "prompts": prompts,
        "candidates_per_prompt": len(samples_of(spec.strategies)),
        "to_generate": to_generate,
        "count_seconds": round(counted, 2),
        "plan_seconds": round(time.perf_counter() - began, 2),
        "first_chunk": first_chunk,
    }
    if full_pass:
        result["full_pass_candidates"] = first_chunk + sum(1 for _ in todo)
        result["full_pass_seconds"] = round(time.perf_counter() - began, 1)
    return result | {"rss_before_mib": round(rss_before), "peak_rss_mib": round(peak_rss_mib())}


def measure_old(db_path: str | Path, domain_yaml: str | Path, policy_version: str) -> dict:
    """The planning before batching: every training prompt, every stored candidate id in a set, every request rendered."""
    spec = DomainSettings(domain_file=str(domain_yaml)).load()
    db = Warehouse(db_path)
    rss_before = rss_mib()
    began = time.perf_counter()
    prompts = db.training_prompts(training_partitions(db))
    stored = set(db.query("select candidate_id from candidates where policy_version = ?", [policy_version])["candidate_id"])
    todo = list(plan_requests(spec, prompts, policy_version, stored))
    return {
        "prompts": prompts.height,
        "to_generate": len(todo),
        "plan_seconds": round(time.perf_counter() - began, 1),
        "rss_before_mib": round(rss_before),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def fill_warehouse(path: Path, prompts: int, stored_share: float, domain_yaml: Path, policy_version: str) -> None:
    """`prompts` training prompts in ten partitions, and the policy's candidates of a `stored_share` of their samples
    (drawn by hash), keyed as the candidates stage keys them."""
    spec = DomainSettings(domain_file=str(domain_yaml)).load()
    db = Warehouse(path)
    samples = [(s.name, s.settings_key(), i) for s, i in samples_of(spec.strategies)]
    with db.transaction() as con:
        con.execute(
            """insert into prompts (prompt_id, messages, text, heldout, first_partition)
               select left(sha256('prompt ' || i), 16), '[{"role": "user", "content": "' || ask || '"}]', ask, false,
                      'logs-' || (i % 10) || '.jsonl'
               from (select i, list_extract(?, (i % 5 + 1)::int) || ' number ' || i || '?' as ask from range(?) t(i))""",
            [ASKS, prompts],
        )
        con.execute("create temp table samples (strategy varchar, sampling varchar, sample_index integer)")
        con.executemany("insert into samples values (?, ?, ?)", samples)
        con.execute(
            """insert into candidates (candidate_id, prompt_id, partition, policy_version, strategy, sampling, sample_index,
                                       response, completion_tokens, engine)
               select left(sha256(prompt_id || '|' || $pv || '|' || strategy || '|' || sampling || '|' || sample_index), 16),
                      prompt_id, first_partition, $pv, strategy, sampling, sample_index, '{"topic": "card"}', 8, 'bench'
               from prompts, samples where hash(prompt_id, strategy, sampling, sample_index) % 1000 < $share""",
            {"pv": policy_version, "share": round(stored_share * 1000)},
        )


def in_fresh_process(db_path: str | Path, domain_yaml: str | Path, policy_version: str, full_pass: bool = False, old: bool = False) -> dict:
    """measure_planning (or measure_old) in a new Python process, so that its peak RSS is the planning's own."""
    args = [str(db_path), str(domain_yaml), policy_version, "full" if full_pass else "plan", "old" if old else "new"]
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=PROJECT_ROOT)
    if out.returncode:
        raise RuntimeError(f"planning.py --child {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--stored-share", type=float, default=0.3, help="share of the candidates already stored")
    parser.add_argument("--full-pass", type=int, default=1_000_000, help="read every planned candidate up to this many prompts")
    parser.add_argument("--old-max", type=int, default=100_000, help="run the old all-at-once planning up to this many prompts")
    parser.add_argument("--work", help="folder for the warehouses (default: a temporary one)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        db_path, domain_yaml, policy_version, full, code = args.child
        if code == "old":
            print(json.dumps(measure_old(db_path, domain_yaml, policy_version)))
        else:
            print(json.dumps(measure_planning(db_path, domain_yaml, policy_version, full_pass=full == "full")))
        return

    work = Path(args.work or tempfile.mkdtemp(prefix="tao-planning-"))
    rows = []
    for size in args.sizes:
        for name, domain_yaml in DOMAINS.items():
            db_path = work / f"{name}-{size}.duckdb"
            db_path.unlink(missing_ok=True)
            began = time.perf_counter()
            fill_warehouse(db_path, size, args.stored_share, domain_yaml, POLICY_VERSION)
            filled = round(time.perf_counter() - began, 1)
            runs = [("new", in_fresh_process(db_path, domain_yaml, POLICY_VERSION, full_pass=size <= args.full_pass))]
            if size <= args.old_max:
                runs.append(("old", in_fresh_process(db_path, domain_yaml, POLICY_VERSION, old=True)))
            for code, measured in runs:
                rows.append({"domain": name, "code": code, "fill_seconds": filled} | measured)
                print(json.dumps(rows[-1]), flush=True)
            db_path.unlink()
    columns = ["domain", "code", "prompts", "to_generate", "plan_seconds", "full_pass_seconds", "rss_before_mib", "peak_rss_mib"]
    print_table([{c: row.get(c, "") for c in columns} for row in rows], "Candidate planning (seconds; MiB; the machine is shared)")
    write_result("planning", {"stored_share": args.stored_share, "chunk": CHUNK, "policy_version": POLICY_VERSION, "runs": rows})


if __name__ == "__main__":
    main()
