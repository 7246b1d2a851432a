"""The optimisation step compared: each training algorithm from the same first round, on each demo domain.

Every algorithm gets the same training time per round (--budget, TrainSettings.max_train_seconds): GRPO spends
it sampling and learning, the offline algorithms learning from the shared candidates, whose generation time the
first round reports once. For each domain, one project home ingests the domain's shipped logs and generates and scores the base model's
candidates once. Each algorithm then starts from a copy of that home, so all train on the very same candidates:
tune, gate (on the held-out gate half) and report (on the test half, which no decision reads). Later rounds
(--rounds 3) continue in the algorithm's own home as the flywheel would: the current policy (the champion if the
gate promoted one) generates new candidates for the training prompts, which are scored, trained on and judged.

Per domain, algorithm and round: the gate half's reward gain (tuned - base), which alone may choose between
algorithms, then, to confirm and never to choose, the test half's mean reward (base, tuned) and the CI of the difference, the
outside check's accuracy (labels read by evaluation alone) beside the reward's own zero-shot choice, the
distillation ratio, the largest share of one answer value, tokens per answer, training and round wall time,
and the peak memory of the process tree during the round. Prints a table; JSON in bench/results/algorithms.json
(algorithms-3-rounds.json for --rounds 3).

    .venv/bin/python bench/algorithms.py                                   # both demos, sft dpo sft+dpo grpo, 1 round
    .venv/bin/python bench/algorithms.py --domains banking --algorithms sft dpo --rounds 3 --budget 600
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from common import print_table, project_home, result_suffix, write_result
from round import MemorySampler

from tao_dagster.paths import PROJECT_ROOT

ALGORITHMS = ["sft", "dpo", "sft+dpo", "grpo"]


def settings_for(home: Path, domain: str):
    from tao_dagster.settings import core_settings

    os.environ["TAO_HOME"] = str(home)
    return core_settings(home, {"domain": {"domain_file": str(PROJECT_ROOT / "assets" / domain / "domain.yaml")}})


def first_round_data(home: Path, domain: str) -> dict:
    """Ingest the domain's logs and score the base model's candidates in `home`, and answer both held-out halves with
    the base model (and its best-of-N on the test half), which every algorithm's gate and report compare with; the
    seconds each took."""
    from tao_dagster.context_window import window_check
    from tao_dagster.pipeline.candidates import generate_candidates
    from tao_dagster.pipeline.heldout import best_of_n, heldout_answers, heldout_prompts
    from tao_dagster.pipeline.prompts import ingest_partition
    from tao_dagster.pipeline.scores import score_partitions
    from tao_dagster.policies import base_policy, current_policy
    from tao_dagster.storage import partition_key
    from tao_dagster.warehouse import Warehouse

    s = settings_for(home, domain)
    db = Warehouse(s.warehouse_path)
    files = sorted((PROJECT_ROOT / "assets" / domain / "logs").iterdir())
    keys = [partition_key(f.name) for f in files]
    window = window_check(s.domain.load(), s.policy)
    for key, path in zip(keys, files):
        ingest_partition(db, key, path, s.domain, window)
    start = time.perf_counter()
    generate_candidates(db, s.domain, s.policy, current_policy(db, s.policy, s.tracking), keys)
    generated = time.perf_counter() - start
    score_partitions(db, s.domain, keys)
    scored = time.perf_counter() - start - generated
    spec, base = s.domain.load(), base_policy(s.policy)
    for part in ("gate", "test"):
        heldout_answers(db, spec, s.policy, base, heldout_prompts(db, s.domain, part))
    best_of_n(db, spec, s.policy, base, heldout_prompts(db, s.domain, "test"))
    return {
        "keys": keys,
        "generate_seconds": generated,
        "score_seconds": scored,
        "heldout_seconds": time.perf_counter() - start - generated - scored,
    }


def one_round(home: Path, domain: str, settings, keys: list[str], number: int) -> dict:
    """Tune with `settings` (TrainSettings), gate and report in `home`; a later round first generates and scores its
    candidates."""
    from tao_dagster.pipeline.candidates import generate_candidates
    from tao_dagster.pipeline.promotion import decide_promotion
    from tao_dagster.pipeline.report import evaluate
    from tao_dagster.pipeline.scores import score_partitions
    from tao_dagster.pipeline.tuning import tune
    from tao_dagster.policies import current_policy
    from tao_dagster.storage import ArtifactStore
    from tao_dagster.warehouse import Warehouse

    s = settings_for(home, domain)
    db = Warehouse(s.warehouse_path)
    start = time.perf_counter()
    if number > 1:
        generate_candidates(db, s.domain, s.policy, current_policy(db, s.policy, s.tracking), keys)
        score_partitions(db, s.domain, keys)
    tuned, summary = tune(db, s.domain, s.policy, s.tracking, ArtifactStore(), settings)
    promoted, gate = decide_promotion(db, s.domain, s.policy, s.tracking, tuned)
    report, _, _ = evaluate(db, s.domain, s.policy, s.tracking, ArtifactStore(), tuned)
    check = report.get("outside_check", {})
    shares = report["answer_distribution"].get("tuned", {})
    return {
        "domain": domain,
        "algorithm": settings.algorithm,
        "round": number,
        "promoted": promoted,
        "gate_diff": gate.get("diff_vs_base", float("nan")),  # tuned - base on the gate half: what a choice may read
        "targets": summary["targets"],
        "pairs": summary["pairs"],
        "steps": summary["steps"],
        "base_reward": report["base_mean_reward"],
        "tuned_reward": report["tuned_mean_reward"],
        "diff_ci_low": report["diff_ci_low"],
        "best_of_n_reward": report["best_of_n_mean_reward"],
        "distillation": report["distillation_ratio"],
        "base_accuracy": check.get("base_accuracy", float("nan")),
        "tuned_accuracy": check.get("tuned_accuracy", float("nan")),
        "reward_choice_accuracy": check.get("reward_choice_accuracy", float("nan")),
        "top_share": max(shares.values(), default=float("nan")),
        "tokens": report["tuned_mean_tokens"],
        "base_tokens": report["base_mean_tokens"],
        "train_s": summary["train_seconds"],
        "round_s": time.perf_counter() - start,
        "report": report,
    }


def main() -> None:
    from tao_dagster.training import TrainSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="+", default=["banking", "hwu64"])
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--budget", type=float, default=300, help="training seconds per round, the same for every algorithm (0: none)")
    parser.add_argument("--grpo-steps", type=int, default=10_000, help="GRPO's steps: by default as many as the budget allows")
    parser.add_argument("--home", help="folder for the project homes (default: a new temporary one)")
    args = parser.parse_args()

    root, rows, data = project_home(args.home, "tao-bench-algorithms-"), [], {}
    for domain in args.domains:
        shared = project_home(str(root / domain / "first-round"), "")
        done = shared / "first-round.json"  # a rerun in the same --home starts from the same candidates
        data[domain] = json.loads(done.read_text()) if done.is_file() else first_round_data(shared, domain)
        done.write_text(json.dumps(data[domain]))
        for algorithm in args.algorithms:
            home = root / domain / algorithm.replace("+", "-")
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(shared, home, symlinks=True)
            for number in range(1, args.rounds + 1):
                sampler = MemorySampler()
                sampler.start()
                settings = TrainSettings(algorithm=algorithm, max_train_seconds=args.budget, grpo_steps=args.grpo_steps)
                row = one_round(home, domain, settings, data[domain]["keys"], number)
                sampler.running = False
                row["peak_gib"] = max(rss for _, rss in sampler.samples) / 2**30
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "report"}, default=str), flush=True)
    table = [{k: v for k, v in row.items() if k != "report"} for row in rows]
    print_table(table, f"algorithms: the same first-round candidates, {args.budget:.0f} s of training each, test half of each domain")
    rounds = f"-{args.rounds}-rounds" if args.rounds > 1 else ""
    write_result(f"algorithms{rounds}{result_suffix()}", {"first_round": data, "rows": rows})


if __name__ == "__main__":
    main()
