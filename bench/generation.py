"""Candidate generation: the candidate_responses stage against bare vLLM in every precision and core count.

One workload for all, on the embedded model: the plain prompts of the first 64 banking queries, 4
candidates each at temperature 0.8, at most 64 new tokens. Answers stop at end of sequence as they would
in use, so each system's tokens/s is its own generated tokens over its own generation time; engine start-up
is timed apart. Repetitions alternate the systems, and the table reports medians.

- stage: `candidate_responses` materialized by Dagster on a 64-prompt partition, with a domain whose one
  strategy is the plain prompt x 4 samples, and the precision and cores the product chooses for this
  machine (tao_dagster/hardware.py); its time is the stage's own `generation_seconds`.
- bare vLLM: `LLM(model, dtype=...).chat(prompts, SamplingParams(n=4, ...))` with the stage's engine settings
  (32-token blocks, eager), in bf16 and fp32: with vLLM's default engine-core and worker processes, the
  worker's threads bound to 1, 2 and all cores (VLLM_CPU_OMP_THREADS_BIND, no core reserved), and with the
  engine in this process on all cores. The stage's target is the fastest of these.

Each bare engine first generates a short warm-up batch (4 prompts x 2 x 16 tokens). bf16 on a machine whose
precision is fp32 (a CPU without fast bf16 kernels, or the AVX2 emulation) is reported from that batch
alone: the full workload would take an hour there.

    .venv/bin/python bench/generation.py          # about 15 minutes on 2 cores
"""

import argparse
import csv
import gc
import json
import os
import time
from pathlib import Path

import dagster as dg
import yaml
from common import machine, median, print_table, project_home, result_suffix, write_result

from tao_dagster.defs.candidates.assets import candidate_responses
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.prompts.assets import raw_prompts
from tao_dagster.defs.resources import default_resources
from tao_dagster.domain import load_domain
from tao_dagster.hardware import compute_cores, compute_precision, scoped_environment, vllm_cpu_environment, vllm_executor_backend
from tao_dagster.paths import PROJECT_ROOT

DEMO = PROJECT_ROOT / "assets" / "banking"
TEMPERATURE = 0.8


def workload(home: Path, prompts: int, candidates: int, max_tokens: int) -> tuple[dict, list[list[dict]]]:
    """The product's resources in `home`, on a one-strategy domain and a one-file log folder with nothing held
    out, and the same prompts as chat messages."""
    spec = yaml.safe_load((DEMO / "domain.yaml").read_text())
    spec["strategies"] = [{"name": "plain", "temperature": TEMPERATURE, "samples": candidates, "max_tokens": max_tokens}]
    (home / "domain.yaml").write_text(yaml.safe_dump(spec))
    (home / "logs").mkdir(parents=True)
    queries = (DEMO / "logs" / "2026-11-02.csv").read_text().splitlines()[: prompts + 1]
    (home / "logs" / "bench.csv").write_text("\n".join(queries) + "\n")
    os.environ["TAO_HOME"] = str(home)
    overrides = {"domain": {"domain_file": str(home / "domain.yaml"), "heldout_fraction": 0.0}, "logs": {"location": str(home / "logs")}}
    resources = default_resources(home, overrides)
    domain = load_domain(home / "domain.yaml")
    # Read back as the ingest reads it: the header is `text`, and quoted queries lose their quotes.
    conversations = [[{"role": "user", "content": row["text"]}] for row in csv.DictReader((home / "logs" / "bench.csv").open())]
    return resources, [domain.messages(c) for c in conversations]


def run_stage(instance: dg.DagsterInstance, resources: dict) -> dict:
    """One materialization of candidate_responses over the bench partition, from no candidates."""
    with resources["warehouse"].get().transaction() as con:
        con.execute("delete from candidates")
    began = time.perf_counter()
    result = dg.materialize([candidate_responses], instance=instance, resources=resources, partition_key="bench.csv")
    wall = time.perf_counter() - began
    metadata = result.asset_materializations_for_node("candidate_responses")[0].metadata
    tokens = int(resources["warehouse"].get().query("select sum(completion_tokens) as n from candidates")["n"][0])
    seconds = metadata["generation_seconds"].value
    return {"tokens": tokens, "seconds": seconds, "start_up_s": wall - seconds}


def bare_configs() -> dict[str, dict[str, str]]:
    """name -> (dtype, vLLM's CPU environment) of each bare vLLM run: bf16 and fp32, the worker process that vLLM
    starts by default with its threads on 1, 2 and all of this process's cores, and the engine in this process
    on all cores (what the stage uses)."""
    cores = compute_cores()
    all_cores = vllm_cpu_environment()
    layouts = {}
    for n in sorted({1, min(2, len(cores)), len(cores)}):
        binding = {**all_cores, "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores[:n])), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
        layouts[f"worker process, {n} core{'s' * (n > 1)}"] = binding
    layouts[f"in process, {len(cores)} cores"] = all_cores
    return {f"bare vLLM {dtype}, {name}": (dtype, env) for dtype in ("bfloat16", "float32") for name, env in layouts.items()}


def run_bare_vllm(model: str, prompts: list, candidates: int, max_tokens: int, dtype: str, env: dict[str, str]) -> dict:
    """Start an engine with the stage's engine settings in `dtype` and `env`, warm it up, run the workload, stop it."""
    from vllm import LLM, SamplingParams

    with scoped_environment(env):
        began = time.perf_counter()
        llm = LLM(
            model=model,
            seed=0,
            max_model_len=1024,
            dtype=dtype,
            block_size=32,
            enforce_eager=True,
            gpu_memory_utilization=0.3,
            distributed_executor_backend=vllm_executor_backend(),
        )
        start_up = time.perf_counter() - began
    slow = dtype != compute_precision().dtype and dtype == "bfloat16"
    try:
        for batch, n, most in [(prompts[:4], 2, 16)] + ([] if slow else [(prompts, candidates, max_tokens)]):  # warm-up, workload
            began = time.perf_counter()
            outputs = llm.chat(batch, SamplingParams(n=n, temperature=TEMPERATURE, max_tokens=most), use_tqdm=False)
            tokens, seconds = sum(len(c.token_ids) for o in outputs for c in o.outputs), time.perf_counter() - began
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    return {"tokens": tokens, "seconds": seconds, "start_up_s": start_up, "warm_up_only": slow}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    resources, prompts = workload(project_home(None, "tao-bench-generation-"), args.prompts, args.candidates, args.max_tokens)
    model = resources["policy"].base_path()
    configs = bare_configs()
    runs: dict[str, list[dict]] = {"stage": [], **{name: [] for name in configs}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(log_files.name, ["bench.csv"])
        assert dg.materialize([raw_prompts], instance=instance, resources=resources, partition_key="bench.csv").success
        for repeat in range(args.repeats):
            runs["stage"].append(run_stage(instance, resources))
            for name, (dtype, env) in configs.items():
                if repeat and runs[name][0]["warm_up_only"]:
                    continue  # the slow path is measured once
                runs[name].append(run_bare_vllm(model, prompts, args.candidates, args.max_tokens, dtype, env))
            rates = ", ".join(f"{name} {r[-1]['tokens'] / r[-1]['seconds']:.0f} tok/s" for name, r in runs.items())
            print(f"repeat {repeat + 1}: {rates}", flush=True)

    rate = {name: median([r["tokens"] / r["seconds"] for r in results]) for name, results in runs.items()}
    precision = compute_precision()
    rows = [
        {
            "system": name if name != "stage" else f"stage ({precision.dtype}, {len(compute_cores())} cores)",
            "tokens/s (median)": round(rate[name], 1),
            "tokens per run": int(median([r["tokens"] for r in results])),
            "seconds per run": round(median([r["seconds"] for r in results]), 1),
            "start-up s": round(median([r["start_up_s"] for r in results]), 1),
            "stage ratio": round(rate["stage"] / rate[name], 2),
            "note": "warm-up batch only: slow path" if results[0].get("warm_up_only") else "",
        }
        for name, results in runs.items()
    ]
    workload_text = f"{args.prompts} prompts x {args.candidates} candidates x <= {args.max_tokens} tokens, {args.repeats} repeats"
    print_table(rows, f"Candidate generation on the embedded model: {workload_text}; {machine()['cpu']}, dispatch {machine()['dispatch']}")
    fastest = max(configs, key=lambda name: rate[name])
    ratio = rate["stage"] / rate[fastest]
    print(f"stage / fastest bare vLLM ({fastest}): {ratio:.2f}x (target >= 0.9x) {'met' if ratio >= 0.9 else 'MISSED'}")
    print(f"precision chosen: {precision.dtype} ({precision.reason})")
    write_result(
        f"generation{result_suffix()}",
        {
            "workload": workload_text,
            "table": rows,
            "ratios": {f"stage / {fastest}": {"ratio": round(ratio, 3), "target": 0.9}},
            "runs": runs,
        },
    )
    print(json.dumps({"stage / fastest bare vLLM": round(ratio, 2)}))


if __name__ == "__main__":
    main()
