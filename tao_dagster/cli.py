"""`tao-dagster demo`: materialize the whole graph on the configured domain and print the report.

Runs are recorded in the project's Dagster instance, so `dagster dev -w workspace.yaml` afterwards shows
the lineage graph with these materializations and their metadata.
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from tao_dagster.defs.resources import PROJECT_ROOT, tao_home


def use_project_instance() -> None:
    """Keep the Dagster instance under the project home, configured by the repository's dagster.yaml."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(tao_home() / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():  # missing, or a link left dangling by a moved checkout
        config.unlink(missing_ok=True)
        config.symlink_to(PROJECT_ROOT / "dagster.yaml")
    os.chdir(PROJECT_ROOT)  # workspace.yaml and the default domain paths are relative to it


def stage(message: str) -> None:
    print(f"[tao {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_demo(max_eval_prompts: int) -> dict:
    import dagster as dg

    from tao_dagster.definitions import defs, prompt_assets, round_assets
    from tao_dagster.defs.partitions import log_files, log_files_in

    instance = dg.DagsterInstance.get()
    resources = defs.resources
    files = log_files_in(resources["domain"].log_dir)
    if not files:
        raise SystemExit(f"no log files in {resources['domain'].log_dir}")
    keys = sorted(files)
    instance.add_dynamic_partitions(log_files.name, [k for k in keys if not instance.has_dynamic_partition(log_files.name, k)])
    start = time.perf_counter()
    stage(f"1/2 raw_prompts -> candidate_responses -> reward_scores over {len(keys)} log-file partitions ({keys[0]} .. {keys[-1]})")
    result = dg.materialize(
        prompt_assets,
        instance=instance,
        resources=resources,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    if not result.success:
        raise SystemExit("scoring the partitions failed: see the log above")
    for key in ("raw_prompts", "candidate_responses", "reward_scores"):
        meta = {
            k: v.value
            for k, v in result.asset_materializations_for_node(key)[0].metadata.items()
            if not isinstance(v.value, str) or len(v.value) < 80
        }
        stage(f"   {key}: {meta}")
    stage(f"2/2 tuned_checkpoint -> eval_report ({time.perf_counter() - start:.0f} s so far)")
    result = dg.materialize(
        round_assets,
        instance=instance,
        resources=resources,
        run_config={"ops": {"eval_report": {"config": {"max_prompts": max_eval_prompts}}}},
        raise_on_error=False,
    )
    if not result.success:
        raise SystemExit("the tuning round failed: see the log above")
    report_meta = result.asset_materializations_for_node("eval_report")[0].metadata
    report = json.loads(Path(report_meta["report_json"].value).read_text())
    report["_paths"] = {k: report_meta[k].value for k in ("report_json", "report_md", "plot")}
    report["_seconds"] = time.perf_counter() - start
    for check in result.get_asset_check_evaluations():
        stage(f"   check {check.check_name}: {'PASSED' if check.passed else 'FAILED'}")
    return report


def print_headline(report: dict) -> None:
    check = report.get("outside_check", {})
    stage(f"done in {report['_seconds'] / 60:.1f} min. Held-out prompts: {report['n']}")
    print(
        f"  mean reward   base {report['base_mean_reward']:.3f}  tuned {report['tuned_mean_reward']:.3f}  "
        f"diff {report['diff']:+.3f} (95% CI {report['diff_ci_low']:+.3f} .. {report['diff_ci_high']:+.3f})  "
        f"win rate {report['win_rate']:.2f}"
    )
    print(f"  output tokens base {report['base_mean_tokens']:.1f}  tuned {report['tuned_mean_tokens']:.1f}")
    if check.get("n_labelled"):
        print(
            f"  outside check base {check['base_accuracy']:.3f}  tuned {check['tuned_accuracy']:.3f} "
            f"(95% CI {check['tuned_accuracy_ci_low']:.3f} .. {check['tuned_accuracy_ci_high']:.3f})  "
            f"majority-class baseline {check['majority_baseline']:.3f}"
        )
    for name, path in report["_paths"].items():
        print(f"  {name}: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tao-dagster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize all five assets on the configured domain (TAO_DOMAIN, TAO_LOG_DIR, TAO_BASE_MODEL)")
    demo.add_argument("--max-eval-prompts", type=int, default=0, help="cap on held-out prompts evaluated (0: all)")
    sub.add_parser("dev", help="start the Dagster UI (dagster dev) on 127.0.0.1:3000 with the project's instance")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    use_project_instance()
    if args.command == "demo":
        print_headline(run_demo(args.max_eval_prompts))
    elif args.command == "dev":
        dagster = Path(sys.executable).with_name("dagster")
        os.execv(dagster, [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1"])


if __name__ == "__main__":
    sys.exit(main())
