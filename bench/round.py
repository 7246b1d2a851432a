"""One full demo round, per stage: wall time, peak memory and engine loads; then one new 100-prompt partition.

Runs what `tao-dagster demo` runs, in this process, in a new project home: the banking demo's first four
log files scored in one run (raw_prompts -> candidate_responses -> reward_scores over four partitions),
then one tuning round (tuned_checkpoint -> promotion_gate -> eval_report) from the base model. Then the
fifth file arrives and is scored as the sensor's run would score it: one partition, from its arrival to
its reward_scores, with the champion (if the round promoted one) generating.

A sampler thread reads the resident memory of this process and all its children every 0.25 s; each
stage's peak is the highest sum while its step ran, and its engine loads are the generation engines
opened meanwhile (on a CPU, vLLM's engine runs in this process). Prints a table and writes bench/results/round.json.

    .venv/bin/python bench/round.py               # about 15 minutes on 2 cores
"""

import argparse
import logging
import os
import shutil
import threading
import time

import psutil
from common import median, print_table, project_home, result_suffix, write_result

from tao_dagster.paths import PROJECT_ROOT

LOGS = PROJECT_ROOT / "assets" / "banking" / "logs"


class MemorySampler(threading.Thread):
    """(time, RSS of this process tree in bytes) every `interval` seconds, and the times engines were opened."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.samples, self.engine_opened, self.running = interval, [], [], True
        sampler = self

        class EngineOpened(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage().startswith("generation engine:"):
                    sampler.engine_opened.append(record.created)

        engines = logging.getLogger("tao_dagster.generation")
        engines.setLevel(logging.INFO)
        engines.addHandler(EngineOpened())

    def run(self) -> None:
        me = psutil.Process()
        while self.running:
            rss = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.samples.append((time.time(), rss))
            time.sleep(self.interval)

    def window(self, start: float, end: float) -> tuple[float, int]:
        """Peak GiB and engines opened between two times."""
        peak = max((rss for t, rss in self.samples if start <= t <= end), default=0) / 2**30
        return peak, sum(start <= t <= end for t in self.engine_opened)


def stage_rows(instance, run_ids: list[str], sampler: MemorySampler, label: str) -> list[dict]:
    rows = []
    for run_id in run_ids:
        for step in instance.get_run_step_stats(run_id):
            if step.end_time is None:
                continue
            peak, engines = sampler.window(step.start_time, step.end_time)
            rows.append(
                {
                    "part": label,
                    "stage": step.step_key,
                    "status": step.status.value,
                    "seconds": round(step.end_time - step.start_time, 1),
                    "peak RSS GiB": round(peak, 2),
                    "engine loads": engines,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="project home (default: a new temporary folder)")
    args = parser.parse_args()
    home = project_home(args.home, "tao-bench-round-")
    os.environ.update({"TAO_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")})
    arrived = home / "incoming"
    arrived.mkdir(parents=True, exist_ok=True)
    files = sorted(LOGS.iterdir())
    for path in files[:-1]:
        shutil.copy(path, arrived / path.name)

    import dagster as dg

    from tao_dagster.cli import run_demo, score, use_project_instance
    from tao_dagster.defs.resources import default_resources

    use_project_instance()
    sampler = MemorySampler()
    sampler.start()
    instance = dg.DagsterInstance.get()
    began = time.time()
    run_demo(1, str(arrived), 0)
    round_s = time.time() - began
    round_runs = [r.dagster_run.run_id for r in instance.get_run_records(ascending=True)]

    # The fifth file arrives: one partition, scored as the sensor's run scores it.
    shutil.copy(files[-1], home / "logs" / files[-1].name)
    began = time.time()
    score(instance, default_resources(), [files[-1].name])
    partition_s = time.time() - began
    sampler.running = False
    sampler.join()
    partition_runs = [r.dagster_run.run_id for r in instance.get_run_records(ascending=True) if r.dagster_run.run_id not in round_runs]

    rows = stage_rows(instance, round_runs, sampler, "demo round") + stage_rows(instance, partition_runs, sampler, "new partition")
    print_table(rows, "One demo round (4 log files scored in one run, then a tuning round), and one new 100-prompt partition")
    peak = max(rss for _, rss in sampler.samples) / 2**30
    training = next((r for r in rows if r["stage"] == "tuned_checkpoint"), {})
    engine_loads = max(r["engine loads"] for r in rows if r["stage"] == "candidate_responses")
    targets = {  # name: (measured, target, met)
        "demo round, minutes": (round_s / 60, "<= 8", round_s / 60 <= 8),
        "new partition to scores, minutes": (partition_s / 60, "<= 2", partition_s / 60 <= 2),
        "peak RSS, GiB": (peak, "<= 8", peak <= 8),
        "engine loads in one multi-partition scoring step": (engine_loads, "1", engine_loads == 1),
    }
    for name, (value, target, met) in targets.items():
        print(f"{name}: {value:.2f} (target {target}) {'met' if met else 'MISSED'}")
    write_result(
        f"round{result_suffix()}",
        {
            "home": str(home),
            "demo_round_s": round(round_s, 1),
            "new_partition_s": round(partition_s, 1),
            "peak_rss_gib": round(peak, 2),
            "training_s": training.get("seconds"),
            "median_sample_interval_s": round(median([b[0] - a[0] for a, b in zip(sampler.samples, sampler.samples[1:])]), 3),
            "targets": {k: {"value": round(v, 3), "target": t, "met": m} for k, (v, t, m) in targets.items()},
            "stages": rows,
        },
    )


if __name__ == "__main__":
    main()
