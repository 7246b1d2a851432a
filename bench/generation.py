"""Candidate generation: the candidate_responses stage against bare vLLM and transformers generate.

One workload for all three, on the embedded model: the plain prompts of the first 64 banking queries,
4 candidates each at temperature 0.8, at most 64 new tokens. Answers stop at end of sequence as they
would in use, so each system's tokens/s is its own generated tokens over its own generation time; model
and engine start-up are timed apart. Repetitions alternate the systems, and the table reports medians.

- stage: `candidate_responses` materialized by Dagster on a 64-prompt partition, with a domain whose one
  strategy is the plain prompt x 4 samples; its time is the stage's own `generation_seconds`.
- bare vLLM: `LLM(model).chat(prompts, SamplingParams(n=4, ...))`, vLLM's defaults otherwise (on this CPU:
  128-token KV blocks and a compiled model);
- bare vLLM, stage's engine: the same call with the stage's engine settings (32-token blocks, eager), which
  isolates what the stage itself costs around the engine.
- transformers: `generate` in bf16, all prompts in one batch, `num_return_sequences=4`.

    .venv/bin/python bench/generation.py          # about 15 minutes on 2 cores
"""

import argparse
import csv
import json
import os
import time
from pathlib import Path

import dagster as dg
import yaml
from common import machine, median, print_table, project_home, write_result

from tao_dagster.defs.candidates import candidate_responses
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.prompts import raw_prompts
from tao_dagster.defs.resources import PROJECT_ROOT, DomainResource, default_resources
from tao_dagster.domain import load_domain

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
    os.environ.update({"TAO_HOME": str(home), "TAO_DOMAIN": str(home / "domain.yaml"), "TAO_LOGS": str(home / "logs")})
    resources = {**default_resources(), "domain": DomainResource(domain_file=str(home / "domain.yaml"), heldout_fraction=0.0)}
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


# Engine arguments of the two bare vLLM runs, beyond the model, seed and context length.
BARE_VLLM = {"bare vLLM": {}, "bare vLLM, stage's engine": {"block_size": 32, "enforce_eager": True}}


def run_bare_vllm(model: str, prompts: list, candidates: int, max_tokens: int, engine_args: dict, llm=None) -> tuple[dict, object]:
    from vllm import LLM, SamplingParams

    began = time.perf_counter()
    llm = llm or LLM(model=model, seed=0, max_model_len=1024, **engine_args)
    start_up = time.perf_counter() - began
    params = SamplingParams(n=candidates, temperature=TEMPERATURE, max_tokens=max_tokens)
    began = time.perf_counter()
    outputs = llm.chat(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - began
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"tokens": tokens, "seconds": seconds, "start_up_s": start_up}, llm


def run_transformers(model, tokenizer, prompts: list[list[dict]], candidates: int, max_tokens: int, start_up: float) -> dict:
    import torch

    batch = tokenizer.apply_chat_template(
        prompts, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True, tokenizer_kwargs={"padding_side": "left"}
    )
    began = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=TEMPERATURE,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_tokens,
            num_return_sequences=candidates,
            pad_token_id=tokenizer.pad_token_id,
        )
    seconds = time.perf_counter() - began
    new = out[:, batch["input_ids"].shape[1] :].tolist()
    tokens = sum(row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row) for row in new)
    return {"tokens": tokens, "seconds": seconds, "start_up_s": start_up}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resources, prompts = workload(project_home(None, "tao-bench-generation-"), args.prompts, args.candidates, args.max_tokens)
    model = resources["policy"].base_path()
    runs: dict[str, list[dict]] = {"stage": [], **{name: [] for name in BARE_VLLM}, "transformers bf16": []}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(log_files.name, ["bench.csv"])
        assert dg.materialize([raw_prompts], instance=instance, resources=resources, partition_key="bench.csv").success
        began = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(model)
        hf_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()
        hf_start_up = time.perf_counter() - began
        engines = dict.fromkeys(BARE_VLLM)
        for repeat in range(args.repeats):
            # The stage opens and closes its own engine; bare vLLM keeps one engine across repeats, as a user's script would.
            runs["stage"].append(run_stage(instance, resources))
            for name, engine_args in BARE_VLLM.items():
                result, engines[name] = run_bare_vllm(model, prompts, args.candidates, args.max_tokens, engine_args, engines[name])
                runs[name].append(result)
            runs["transformers bf16"].append(run_transformers(hf_model, tokenizer, prompts, args.candidates, args.max_tokens, hf_start_up))
            rates = ", ".join(f"{name} {r[-1]['tokens'] / r[-1]['seconds']:.0f} tok/s" for name, r in runs.items())
            print(f"repeat {repeat + 1}: {rates}", flush=True)
        for llm in engines.values():
            llm.llm_engine.engine_core.shutdown()

    rate = {name: median([r["tokens"] / r["seconds"] for r in results]) for name, results in runs.items()}
    rows = [
        {
            "system": name,
            "tokens/s (median)": round(rate[name], 1),
            "tokens per run": int(median([r["tokens"] for r in results])),
            "seconds per run": round(median([r["seconds"] for r in results]), 1),
            "start-up s": round(max(r["start_up_s"] for r in results), 1),  # bare vLLM starts once, the stage every run
            "stage ratio": round(rate["stage"] / rate[name], 2),
        }
        for name, results in runs.items()
    ]
    workload_text = f"{args.prompts} prompts x {args.candidates} candidates x <= {args.max_tokens} tokens, {args.repeats} repeats"
    print_table(rows, f"Candidate generation on the embedded model: {workload_text}; {machine()['cpu']}")
    targets = {
        "stage / bare vLLM": (rate["stage"] / rate["bare vLLM"], 0.9),
        "stage / bare vLLM, stage's engine": (rate["stage"] / rate["bare vLLM, stage's engine"], 0.9),
        "stage / transformers bf16": (rate["stage"] / rate["transformers bf16"], 2.4),
    }
    for name, (ratio, target) in targets.items():
        print(f"{name}: {ratio:.2f}x (target >= {target}x) {'met' if ratio >= target else 'MISSED'}")
    write_result(
        "generation",
        {
            "workload": workload_text,
            "table": rows,
            "ratios": {name: {"ratio": round(ratio, 3), "target": target} for name, (ratio, target) in targets.items()},
            "runs": runs,
        },
    )
    print(json.dumps({k: round(v[0], 2) for k, v in targets.items()}))


if __name__ == "__main__":
    main()
