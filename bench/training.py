"""DPO training: the project's DPO step against TRL's DPOTrainer in a naive configuration, on the same pairs.

Both run `train_stage("dpo", ...)` (TRL's DPOTrainer, LoRA r=16 on all linear layers, sigmoid + SFT loss, the same
seed, batches and learning-rate schedule) on the embedded model, in the same precision, and differ only in
these settings:

- naive TRL: reference log-probs computed at every step, TRL's own forward (each pair's prompt runs twice,
  and the LM head scores every position against the 49k-token vocabulary), TRL's default gradient
  checkpointing;
- project: the TrainSettings defaults: one reference pass before training, the opening all prompts share
  run once per batch and each prompt once for both answers of its pair, only answer tokens through the LM
  head (`share_prompts`), and under bf16 the LoRA sums in fp32.

Each pair is measured in float32, and in bfloat16 too where this machine's precision is bf16 (elsewhere
bf16 is the slow path: a hundred times slower, see tao_dagster/hardware.py, and not worth an hour here).
Pairs: plain banking prompts (the demo domain's instruction + a real query), a JSON answer as chosen and
a chatty non-JSON one as rejected, the canned answers of bench/scorers.py's kind, so the run needs no
generation. tokens/s counts prompt+chosen and prompt+rejected tokens over the training time, the
reference pass included. Repetitions alternate the configurations; the table shows medians, and the loss
curves are printed step by step so a speed-up cannot hide a different optimisation.

    .venv/bin/python bench/training.py            # about 10 minutes on 2 cores
"""

import argparse
import csv
import tempfile
from dataclasses import asdict
from pathlib import Path

from common import machine, median, print_table, result_suffix, write_result

from tao_dagster.domain import load_domain
from tao_dagster.hardware import Precision, compute_precision
from tao_dagster.models import resolve_base_model
from tao_dagster.paths import PROJECT_ROOT
from tao_dagster.training import TrainSettings, train_stage

DEMO = PROJECT_ROOT / "assets" / "banking"
CHOSEN = [
    '{"topic": "card", "reply": "Sorry for the wait: new cards usually arrive within five working days."}',
    '{"topic": "payment", "reply": "The duplicate payment will be refunded within a few days."}',
    '{"topic": "transfer", "reply": "International transfers usually arrive within one to three working days."}',
    '{"topic": "account", "reply": "You can update your personal details in the app settings."}',
]
REJECTED = [
    "You can track this in the app under Cards, or contact support if it has not arrived after a week.",
    "I am sorry to hear that. Please check the exchange rate shown in the app before you exchange currency.",
    "Hello! Thank you for reaching out. Could you tell me a bit more about what happened so I can help?",
]
NAIVE = {"precompute_ref_log_probs": False, "share_prompts": False, "gradient_checkpointing": True}


def configurations() -> dict[str, tuple[Precision, dict]]:
    """(precision, TrainSettings overrides) per configuration: naive and project in fp32, and in bf16 where it is fast."""
    dtypes = ["float32", "bfloat16"] if compute_precision().bf16 else ["float32"]
    return {
        f"{system} {dtype}": (Precision(dtype, "bench"), flags)
        for dtype in dtypes
        for system, flags in (("naive TRL", NAIVE), ("project", {}))
    }


def preference_pairs(count: int) -> list[dict]:
    domain = load_domain(DEMO / "domain.yaml")
    queries = [row["text"] for name in ("2026-11-02.csv", "2026-11-03.csv") for row in csv.DictReader((DEMO / "logs" / name).open())]
    return [
        {
            "prompt": domain.messages([{"role": "user", "content": query}]),
            "chosen": [{"role": "assistant", "content": CHOSEN[i % len(CHOSEN)]}],
            "rejected": [{"role": "assistant", "content": REJECTED[i % len(REJECTED)]}],
        }
        for i, query in enumerate(queries[:count])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = resolve_base_model("embedded", PROJECT_ROOT / ".tao_home" / "cache")
    pairs = preference_pairs(args.pairs)
    configs = configurations()
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for repeat in range(args.repeats):
        for name, (precision, flags) in configs.items():
            settings = TrainSettings(batch_size=args.batch_size, max_pairs=0, **flags)
            with tempfile.TemporaryDirectory(prefix="tao-bench-training-") as work:
                metrics = train_stage("dpo", model, pairs, settings, Path(work) / "model", Path(work) / "trainer", precision=precision)
            runs[name].append(metrics)
            print(f"repeat {repeat + 1} {name}: {metrics['tokens_per_second']:.0f} tokens/s, loss {metrics['loss_curve']}", flush=True)

    rate = {name: median([m["tokens_per_second"] for m in results]) for name, results in runs.items()}

    def naive(name: str) -> str:
        return "naive TRL " + name.rsplit(" ", 1)[1]  # the naive run in the same precision

    rows = [
        {
            "configuration": name,
            "tokens/s (median)": round(rate[name], 1),
            "seconds (median)": round(median([m["train_seconds"] for m in results]), 1),
            "tokens": results[0]["train_tokens"],
            "speed-up": round(rate[name] / rate[naive(name)], 2),
            "final loss": round(results[0]["final_loss"], 4),
            "max |loss - naive|": round(max(abs(a - b) for a, b in zip(results[0]["loss_curve"], runs[naive(name)][0]["loss_curve"])), 4),
        }
        for name, results in runs.items()
    ]
    steps = len(runs[next(iter(runs))][0]["loss_curve"])
    workload = f"{args.pairs} pairs, batch {args.batch_size}, {steps} steps, {args.repeats} repeats"
    print_table(rows, f"DPO training on the embedded model: {workload}; {machine()['cpu']}")
    print("\nloss per step (first repeat)")
    for name, results in runs.items():
        print(f"{name:<20}" + " ".join(f"{loss:.4f}" for loss in results[0]["loss_curve"]))
    ratios = {f"{name} / {naive(name)}": rate[name] / rate[naive(name)] for name in runs if name.startswith("project")}
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x tokens/s (target >= 3x) {'met' if ratio >= 3 else 'MISSED'}")
    write_result(
        f"training{result_suffix()}",
        {
            "workload": workload,
            "precision": asdict(compute_precision()),
            "table": rows,
            "ratios": {name: {"ratio": round(ratio, 3), "target": 3.0} for name, ratio in ratios.items()},
            "loss_curves": {name: [m["loss_curve"] for m in results] for name, results in runs.items()},
            "runs": {name: [{k: v for k, v in m.items() if k != "loss_curve"} for m in results] for name, results in runs.items()},
        },
    )


if __name__ == "__main__":
    main()
