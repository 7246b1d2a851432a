"""What each built-in scorer costs per 100 candidates on this machine.

100 candidates: 25 real banking queries from the demo's first log file, 4 banking-like responses each
(JSON alone, JSON wrapped in text, a plain sentence, an over-long answer). Each scorer scores all 100 in
one call, as reward_scores does; the time is the median of 3 calls and includes loading any model, which
every call does. The judges run on the embedded SmolLM2-135M-Instruct, once through vLLM's
OpenAI-compatible server (start-up reported apart) and once through transformers. Reward models: the
tiny random model the tests use, and one of the base model's size (its body with a random score head);
real reward models (Skywork-Reward-V2-Llama-3.1-8B, say) are about 60 times larger and want a GPU.
Prints a table and writes bench/results/scorers.json.

On a shared machine, torch's two OpenMP threads slow down 5 to 8 times when other processes compete for
the cores (they spin-wait for each other); `--threads 1` keeps in-process models steady there.

    .venv/bin/python bench/scorers.py [--threads 1]     # about 20 minutes on 2 cores
"""

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import PROJECT_ROOT

from tao_dagster.domain import load_domain
from tao_dagster.hardware import compute_precision
from tao_dagster.models import resolve_base_model
from tao_dagster.rewards import Scored, Scorer, build_scorers
from tests.support.devserver import vllm_server
from tests.support.models import tiny_llama_config

PROMPTS, PER_PROMPT, REPEATS = 25, 4, 3
REPLIES = [
    '{"topic": "card", "reply": "Sorry for the wait: new cards usually arrive within five working days."}',
    'Here is my answer: {"topic": "payment", "reply": "The duplicate payment will be refunded within a few days."}',
    "You can track this in the app under Cards, or contact support if it has not arrived after a week.",
    '{"topic": "account", "reply": "You can update your personal details in the app settings, where you will also find your '
    'verification status, your passcode options and the steps to close the account if you no longer need it."}',
    '{"topic": "transfer", "reply": "International transfers usually arrive within one to three working days."}',
    'Sure! {"topic": "cash", "reply": "Please send us the ATM location and time so we can investigate."}',
    "I am sorry to hear that. Please check the exchange rate shown in the app before you exchange currency.",
    '{"topic": "top_up", "reply": "Top ups can fail if the card has expired; please check it and try again."}',
]
RUBRIC = 'One line of JSON {"topic": ..., "reply": ...}: the topic that fits the customer message and a short, polite, helpful reply.'
SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"enum": ["card", "payment", "cash", "transfer", "top_up", "exchange", "account"]},
        "reply": {"type": "string", "minLength": 10},
    },
    "required": ["topic", "reply"],
}


def reply_words(items: list[Scored]) -> list[float]:
    """The `python` scorer's callable here: a share of a 40-word budget left."""
    return [max(0.0, 1 - len(i.response.split()) / 40) for i in items]


def candidates() -> list[Scored]:
    with (PROJECT_ROOT / "assets" / "banking" / "logs" / "2026-11-02.csv").open() as f:
        queries = [row["text"] for row in csv.DictReader(f)][:PROMPTS]
    return [Scored(f"p{n}", q, REPLIES[(n + k) % len(REPLIES)]) for n, q in enumerate(queries) for k in range(PER_PROMPT)]


def sql_candidates() -> list[Scored]:
    """100 answers to the text-to-SQL demo: queries that run, fail, return nothing, or are not SQL."""
    answers = [
        "```sql\nSELECT name, city FROM customers WHERE country = 'Portugal';\n```",
        "```sql\nSELECT category, sum(price * quantity) FROM orders JOIN products USING (product_id) GROUP BY category;\n```",
        "```sql\nSELECT * FROM clients;\n```",
        "```sql\nSELECT name FROM customers WHERE city = 'Atlantis';\n```",
        "You could count the orders per customer.",
    ]
    return [Scored(f"q{n}", f"question {n}", answers[(n + k) % len(answers)]) for n in range(PROMPTS) for k in range(PER_PROMPT)]


def measure(scorer: Scorer, items: list[Scored], note: str = "") -> dict:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        scores = scorer.score(items)
        times.append(time.perf_counter() - start)
    row = {
        "scorer": scorer.name,
        "kind": scorer.kind,
        "seconds_per_100": float(f"{statistics.median(times) * 100 / len(items):.3g}"),
        "runs_s": [float(f"{t:.3g}") for t in times],
        "mean_score": round(statistics.fmean(scores), 3),
        "note": note,
    }
    print(f"{row['scorer']:<28}{row['seconds_per_100']:>10.3g}  {row['note']}", flush=True)
    return row


def reward_models(base: str, out: Path) -> dict[str, str]:
    """The tests' tiny random classifier, and the base model's body with a random single-logit head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    tiny = tiny_llama_config(tokenizer, num_labels=1)
    LlamaForSequenceClassification(tiny).save_pretrained(out / "tiny")
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.bfloat16).save_pretrained(out / "135m")
    for name in ("tiny", "135m"):
        tokenizer.save_pretrained(out / name)
    return {name: str(out / name) for name in ("tiny", "135m")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(PROJECT_ROOT / "bench" / "results" / "scorers.json"))
    parser.add_argument("--threads", type=int, help="torch threads for the in-process models (default: torch's own choice)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    base = resolve_base_model("embedded", PROJECT_ROOT / ".tao_home" / "cache")
    items, load = candidates(), os.getloadavg()[0]
    pairs = PROMPTS * PER_PROMPT * (PER_PROMPT - 1)
    print(f"{len(items)} candidates ({PROMPTS} prompts x {PER_PROMPT}), median of {REPEATS} calls\n{'scorer':<28}{'s/100':>10}", flush=True)
    rules = [
        {"name": "json_schema", "kind": "json_schema", "schema": SCHEMA},
        {"name": "length", "kind": "length", "min": 4, "max": 30, "field": "reply"},
        {"name": "terms", "kind": "terms", "required": ["app", "working days"], "forbidden": ["guarantee", "password"]},
        {"name": "python", "kind": "python", "callable": "__main__:reply_words"},
        {"name": "self_consistency (json)", "kind": "self_consistency", "field": "topic"},
        {"name": "self_consistency (number)", "kind": "self_consistency", "extract": "last_number"},
    ]
    rows = [measure(s, items) for s in build_scorers(rules)]
    banking = load_domain(PROJECT_ROOT / "assets" / "banking" / "domain.yaml").build_scorers()
    rows += [measure(s, items, "the banking demo's own scorer") for s in banking]
    sql = load_domain(PROJECT_ROOT / "assets" / "text_to_sql" / "domain.yaml").build_scorers()
    rows += [measure(s, sql_candidates(), "the text-to-SQL demo's scorer, on SQL answers") for s in sql]
    dtype = compute_precision().dtype  # of the in-process models
    with tempfile.TemporaryDirectory(prefix="tao-bench-") as tmp:
        models = reward_models(base, Path(tmp))
        for name, path in models.items():
            note = "tiny random model (2 layers, width 64)" if name == "tiny" else f"135M parameters (model body, random head), {dtype}"
            rows.append(measure(build_scorers([{"name": f"reward_model ({name})", "kind": "reward_model", "model": path}])[0], items, note))
        for mode, calls in (("pointwise", len(items)), ("pairwise", pairs)):
            spec = {"name": f"llm_judge {mode} (local)", "kind": "llm_judge", "model": base, "rubric": RUBRIC, "mode": mode}
            rows.append(measure(build_scorers([spec])[0], items, f"transformers, 135M, {dtype}, {calls} judge calls"))
        start = time.perf_counter()
        os.environ["TAO_BENCH_JUDGE_KEY"] = "bench-key"
        with vllm_server(base, Path(tmp) / "vllm.log", api_key="bench-key") as (url, _):
            startup = time.perf_counter() - start
            print(f"(vLLM server up in {startup:.0f} s)", flush=True)
            for mode, calls in (("pointwise", len(items)), ("pairwise", pairs)):
                spec = {"name": f"llm_judge {mode} (vLLM)", "kind": "llm_judge", "model": "judge", "rubric": RUBRIC, "mode": mode}
                spec |= {"base_url": url, "api_key_env": "TAO_BENCH_JUDGE_KEY"}
                rows.append(measure(build_scorers([spec])[0], items, f"vLLM server, 135M, {calls} judge calls, 8 at a time"))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, load average {load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end",
        "torch_threads": torch.get_num_threads(),
        "candidates": len(items),
        "vllm_server_startup_s": round(startup),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
