"""The flywheel in the real daemon, on the embedded model and the banking demo.

`tao-dagster dev` runs with its sensor and a round schedule that fires every minute. The demo's first four
log files are dropped into the watched folder: the sensor turns each into a partition and a scoring run, and
once the queue drains the schedule starts round 1 from the base model. Then the fifth file is dropped: it
is scored with the champion, and round 2 trains from the champion. Prints every run's wall time, the
latency from the fifth file's drop to its scores, the promotion gate's decisions and both rounds' eval
numbers, and writes them to bench/results/flywheel.json.

    .venv/bin/python bench/flywheel.py            # about 35 minutes on 2 cores
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import dagster as dg
from common import project_home

from tao_dagster.paths import PROJECT_ROOT
from tests.support.devserver import dagster_dev, wait_for

LOGS = PROJECT_ROOT / "assets" / "banking" / "logs"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def finished_rounds(instance: dg.DagsterInstance) -> list[dg.RunRecord]:
    records = instance.get_run_records(dg.RunsFilter(job_name="tuning_round"), ascending=True)
    return [r for r in records if r.dagster_run.status in FINISHED]


def scored_at(instance: dg.DagsterInstance, partition: str) -> float | None:
    """When reward_scores was last materialized for this partition (epoch seconds), if ever."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(dg.AssetKey("reward_scores"), asset_partitions=[partition]), limit=1)
    return records.records[0].timestamp if records.records else None


def round_summary(instance: dg.DagsterInstance, record: dg.RunRecord) -> dict:
    """The gate's verdict and, when it passed, the eval report's numbers for one tuning round."""
    run_id = record.dagster_run.run_id
    summary = {"run_id": run_id, "status": record.dagster_run.status.value, "parent": record.dagster_run.tags.get("tao/parent")}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        check = entry.dagster_event.event_specific_data
        if check.check_name == "promotion_gate":
            summary["gate"] = {k: v.value for k, v in check.metadata.items()}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.dagster_event.event_specific_data.materialization
        name = materialization.asset_key.to_user_string()
        metadata = materialization.metadata.items()
        summary[name] = {k: v.value for k, v in metadata if isinstance(v.value, int | float | str) and k != "report"}
    if "eval_report" in summary:
        summary["outside_check"] = json.loads(Path(summary["eval_report"]["report_json"]).read_text()).get("outside_check", {})
    return summary


def run_table(instance: dg.DagsterInstance) -> list[dict]:
    rows = []
    for record in instance.get_run_records(ascending=True):
        run = record.dagster_run
        steps = {s.step_key: round(s.end_time - s.start_time) for s in instance.get_run_step_stats(run.run_id) if s.end_time}
        rows.append(
            {
                "job": run.job_name,
                "partition": run.tags.get("dagster/partition", ""),
                "status": run.status.value,
                "queued_s": round(record.start_time - record.create_timestamp.timestamp()) if record.start_time else None,
                "run_s": round(record.end_time - record.start_time) if record.end_time and record.start_time else None,
                "steps_s": steps,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="project home to use (default: a new temporary folder)")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "bench" / "results" / "flywheel.json"))
    args = parser.parse_args()
    home = project_home(args.home, "tao-flywheel-")
    watched = home / "logs"
    watched.mkdir(parents=True, exist_ok=True)
    env = {"TAO_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "TAO_ROUND_CRON": "* * * * *", "TAO_ROUND_MIN_NEW_PROMPTS": "50"}
    files = sorted(LOGS.iterdir())
    start = time.time()
    with dagster_dev(env, home / "dagster-dev.log") as (_, server):
        instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
        print(f"[{time.time() - start:5.0f} s] dagster dev is up; dropping {len(files) - 1} log files into {watched}", flush=True)
        for path in files[:-1]:
            shutil.copy(path, watched / path.name)
        wait_for("round 1", lambda: len(finished_rounds(instance)) >= 1, 3600, server, poll=5)
        print(f"[{time.time() - start:5.0f} s] round 1 finished; dropping {files[-1].name}", flush=True)
        dropped = time.time()
        shutil.copy(files[-1], watched / files[-1].name)
        scored = wait_for("scores of the new file", lambda: scored_at(instance, files[-1].name), 1800, server, poll=2)
        print(f"[{time.time() - start:5.0f} s] {files[-1].name} scored {scored - dropped:.0f} s after it was dropped", flush=True)
        wait_for("round 2", lambda: len(finished_rounds(instance)) >= 2, 3600, server, poll=5)
        print(f"[{time.time() - start:5.0f} s] round 2 finished", flush=True)
        result = {
            "home": str(home),
            "total_s": round(time.time() - start),
            "new_file_drop_to_scored_s": round(scored - dropped),
            "runs": run_table(instance),
            "rounds": [round_summary(instance, r) for r in finished_rounds(instance)[:2]],
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{'job':<16}{'partition':<20}{'status':<10}{'queued s':>9}{'run s':>7}  steps (s)")
    for row in result["runs"]:
        print(f"{row['job']:<16}{row['partition']:<20}{row['status']:<10}{row['queued_s']!s:>9}{row['run_s']!s:>7}  {row['steps_s']}")
    print(f"\nnew 100-prompt file, drop to scored: {result['new_file_drop_to_scored_s']} s")
    for number, summary in enumerate(result["rounds"], start=1):
        gate = summary.get("gate", {})
        report = summary.get("eval_report", {})
        print(f"round {number} from {summary['parent']}: {gate.get('decision', 'no gate verdict')}")
        print(f"   {gate.get('reason', '')}")
        if report:
            print(
                f"   eval: base {report['base_mean_reward']:.3f} tuned {report['tuned_mean_reward']:.3f} "
                f"diff {report['diff']:+.3f} [{report['diff_ci_low']:+.3f}, {report['diff_ci_high']:+.3f}] n={report['n']}, "
                f"tokens {report['base_mean_tokens']:.1f} -> {report['tuned_mean_tokens']:.1f}"
            )
        check = summary.get("outside_check", {})
        if check:
            print(
                f"   outside check: base {check['base_accuracy']:.3f} tuned {check['tuned_accuracy']:.3f} "
                f"[{check['tuned_accuracy_ci_low']:.3f}, {check['tuned_accuracy_ci_high']:.3f}] majority {check['majority_baseline']:.3f}"
            )
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
