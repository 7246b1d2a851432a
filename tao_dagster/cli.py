"""`tao-dagster demo`: materialize the whole graph on the configured domain and print the report.

Runs are recorded in the project's Dagster instance, so `dagster dev -w workspace.yaml` afterwards shows
the lineage graph with these materializations and their metadata.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from tao_dagster.defs.deploy import INSTANCE_YAML
from tao_dagster.defs.steps import interrupt_received
from tao_dagster.paths import PROJECT_ROOT, keep_caches_in_home, tao_home
from tao_dagster.settings import profile


def use_project_instance() -> None:
    """Keep the Dagster instance under the project home, configured by the profile's instance yaml (TAO_PROFILE:
    dagster.yaml, or deploy/dagster.prod.yaml). A dagster.yaml of the user's own there (not a link) is kept."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(tao_home() / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    config, wanted = home / "dagster.yaml", INSTANCE_YAML[profile()]
    if not config.exists() or (config.is_symlink() and config.readlink() != wanted):  # missing, dangling, or another profile's
        config.unlink(missing_ok=True)
        config.symlink_to(wanted)
    os.chdir(PROJECT_ROOT)  # workspace.yaml and the default domain paths are relative to it


def stage(message: str) -> None:
    print(f"[tao {time.strftime('%H:%M:%S')}] {message}", flush=True)


def deliver(source: Path, logs) -> None:
    """Copy the example log files into a local log location, as production traffic would arrive there."""
    if logs.location.startswith("s3://"):
        raise SystemExit(f"the demo copies example logs to a local folder: upload them to {logs.location} and pass --logs-from ''")
    target = Path(logs.location)
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and not (target / path.name).exists():
            shutil.copy2(path, target / path.name)


def score(instance, resources: dict, keys: list[str]) -> None:
    """Materialize raw_prompts -> candidate_responses -> reward_scores for these partitions in one run."""
    import dagster as dg

    from tao_dagster.defs.flywheel.jobs import prompt_assets
    from tao_dagster.defs.partitions import log_files

    instance.add_dynamic_partitions(log_files.name, [k for k in keys if not instance.has_dynamic_partition(log_files.name, k)])
    order = [k for k in instance.get_dynamic_partitions(log_files.name) if k in keys]
    stage(f"raw_prompts -> candidate_responses -> reward_scores over {len(keys)} log-file partitions ({order[0]} .. {order[-1]})")
    tags = {"dagster/asset_partition_range_start": order[0], "dagster/asset_partition_range_end": order[-1]}
    result = dg.materialize(prompt_assets, instance=instance, resources=resources, tags=tags)
    if not result.success:
        raise SystemExit("scoring the partitions failed: see the log above")
    for key in ("raw_prompts", "candidate_responses", "reward_scores"):
        meta = result.asset_materializations_for_node(key)[0].metadata
        stage(f"   {key}: " + str({k: v.value for k, v in meta.items() if isinstance(v.value, int | float) or len(str(v.value)) < 40}))


def tuning_round(instance, resources: dict) -> dict:
    """tuned_checkpoint -> promotion_gate -> eval_report; returns the report, or the gate's verdict if it refused."""
    import dagster as dg

    from tao_dagster.defs.checkpoint.gate import promotion_gate
    from tao_dagster.defs.flywheel.jobs import round_assets

    stage("tuned_checkpoint -> promotion_gate -> eval_report")
    result = dg.materialize([*round_assets, promotion_gate], instance=instance, resources=resources, raise_on_error=False)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    for check in checks.values():
        stage(f"   check {check.check_name}: {'PASSED' if check.passed else 'FAILED'}")
    gate = checks.get("promotion_gate")
    if gate is None:
        raise SystemExit("the tuning round failed before its promotion gate: see the log above")
    stage(f"   promotion gate: {gate.metadata['decision'].value}. {gate.metadata['reason'].value if 'reason' in gate.metadata else ''}")
    if not gate.passed:
        if "why_not" in gate.metadata:
            stage(f"   why: {gate.metadata['why_not'].value}")
        return {"gate": gate.metadata["decision"].value}
    if not result.success:
        raise SystemExit("the tuning round failed: see the log above")
    report_meta = result.asset_materializations_for_node("eval_report")[0].metadata
    report = json.loads(Path(report_meta["report_json"].value).read_text())
    report["_paths"] = {k: report_meta[k].value for k in ("report_json", "report_md", "plot")}
    report["gate"] = gate.metadata["decision"].value
    return report


def example_logs() -> Path:
    """The logs shipped beside the domain file when TAO_DOMAIN is one of the demos in assets/<name>/, so another
    demo domain is not fed banking's traffic; banking's logs otherwise (a user's own domain passes its own)."""
    folder = (PROJECT_ROOT / os.environ.get("TAO_DOMAIN", "assets/banking/domain.yaml")).resolve().parent
    if folder.parent == PROJECT_ROOT / "assets" and (folder / "logs").is_dir():
        return folder / "logs"
    return PROJECT_ROOT / "assets" / "banking" / "logs"


def run_demo(rounds: int, logs_from: str, max_eval_prompts: int) -> None:
    """Deliver the example logs, then run up to `rounds` flywheel rounds as the sensor and schedule would:
    the last `rounds - 1` files arrive one per round, files already scored are not scored again, and a
    round runs only when prompts were scored under the current policy since the last checkpoint."""
    import dagster as dg

    from tao_dagster.defs.flywheel.sensors import already_scored
    from tao_dagster.defs.resources import default_resources
    from tao_dagster.policies import current_version
    from tao_dagster.settings import core_settings
    from tao_dagster.warehouse import Warehouse

    overrides = {"domain": {"max_eval_prompts": max_eval_prompts}} if max_eval_prompts else {}
    resources, settings = default_resources(overrides=overrides), core_settings(overrides=overrides)
    if logs_from:
        deliver(Path(logs_from), settings.logs)
    files = settings.logs.list_files()
    keys = sorted(files)
    if len(keys) < rounds:
        raise SystemExit(f"{rounds} rounds need at least {rounds} log files; {settings.logs.location} has {len(keys)}")
    instance = dg.DagsterInstance.get()
    db = Warehouse(settings.warehouse_path)
    start = time.perf_counter()
    first = len(keys) - rounds + 1
    for number in range(1, rounds + 1):
        stage(f"round {number} of {rounds}")
        arriving = keys[:first] if number == 1 else [keys[first + number - 2]]
        todo = [k for k in arriving if not already_scored(instance, k, files[k].fingerprint)]
        if todo:
            score(instance, resources, todo)
        version = current_version(db, settings.policy, settings.tracking)
        if not db.new_scored_prompts(version):
            stage(f"   nothing scored under {version} since the last checkpoint: no round to run")
            continue
        report = tuning_round(instance, resources)
        stage(f"round {number} done ({time.perf_counter() - start:.0f} s so far)")
        if "n" in report:
            print_headline(report)


def serve(host: str | None, port: int | None, model_name: str | None) -> int:
    """The champion behind an OpenAI-compatible endpoint, its traffic logged into the log location."""
    from tao_dagster.serving.server import run_server
    from tao_dagster.settings import check, core_settings, from_environment

    given = {"host": host, "port": port, "model_name": model_name}
    overrides = {"serve": {k: v for k, v in given.items() if v is not None}}
    location = from_environment(overrides=overrides)["logs"]["location"]
    if not location.startswith("s3://"):
        Path(location).mkdir(parents=True, exist_ok=True)  # the server writes the logs: it may create their folder
    check(from_environment(overrides=overrides))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[tao %(asctime)s] %(message)s", "%H:%M:%S"))
    served = logging.getLogger("tao_dagster.serving")
    served.setLevel(logging.INFO)
    served.addHandler(handler)
    served.propagate = False  # not also through the root handler
    return run_server(core_settings(overrides=overrides))


def print_headline(report: dict) -> None:
    check = report.get("outside_check", {})
    print(f"  {report['gate']}. Held-out prompts: {report['n']}")
    print(
        f"  mean reward   base {report['base_mean_reward']:.3f}  tuned {report['tuned_mean_reward']:.3f}  "
        f"diff {report['diff']:+.3f} (95% CI {report['diff_ci_low']:+.3f} .. {report['diff_ci_high']:+.3f})  "
        f"win rate {report['win_rate']:.2f}"
    )
    print(
        f"  best-of-N of the parent {report['best_of_n_mean_reward']:.3f}  distillation ratio {report['distillation_ratio']:.2f}"
        f"  (how much of best-of-N's gain the tuned model keeps, answering once)"
    )
    print(f"  output tokens base {report['base_mean_tokens']:.1f}  tuned {report['tuned_mean_tokens']:.1f}")
    if check.get("n_labelled"):
        print(
            f"  outside check base {check['base_accuracy']:.3f}  tuned {check['tuned_accuracy']:.3f} "
            f"(95% CI {check['tuned_accuracy_ci_low']:.3f} .. {check['tuned_accuracy_ci_high']:.3f})  "
            f"majority-class baseline {check['majority_baseline']:.3f}"
            + (f"  the reward's own choice {check['reward_choice_accuracy']:.3f}" if "reward_choice_accuracy" in check else "")
        )
    if "why_no_lift" in report:
        print(f"  no lift: {report['why_no_lift']['advice']}")
    for name, path in report["_paths"].items():
        print(f"  {name}: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tao-dagster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize the whole graph on the configured domain (TAO_DOMAIN, TAO_LOGS, TAO_BASE_MODEL)")
    demo.add_argument("--rounds", type=int, default=1, help="flywheel rounds; the last rounds-1 log files arrive one per later round")
    demo.add_argument(
        "--logs-from",
        default=str(example_logs()),
        help="copy these log files into the log location first ('' to use what is there); default: the demo domain's logs",
    )
    demo.add_argument("--max-eval-prompts", type=int, default=0, help="cap on held-out prompts evaluated (0: all)")
    dev = sub.add_parser("dev", help="start the Dagster UI, daemon, sensor and schedule (dagster dev) with the project's instance")
    dev.add_argument("--port", type=int, default=3000, help="UI and GraphQL port on 127.0.0.1")
    serving = sub.add_parser("serve", help="serve the champion on an OpenAI-compatible endpoint and log its traffic for the flywheel")
    serving.add_argument("--host", help="address to listen on (default TAO_SERVE_HOST or 127.0.0.1)")
    serving.add_argument("--port", type=int, help="port (default TAO_SERVE_PORT or 8000)")
    serving.add_argument("--model-name", help="the stable model name applications send (default TAO_SERVE_MODEL or tao-<domain name>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    keep_caches_in_home()
    use_project_instance()
    if args.command == "demo":
        try:
            run_demo(args.rounds, args.logs_from, args.max_eval_prompts)
        except BaseException as err:  # a step turns an interrupt into a failure of its run (see stops_when_interrupted)
            if isinstance(err, KeyboardInterrupt) or interrupt_received.is_set():
                stage("interrupted: stopped, nothing retried")
                sys.exit(130)
            raise
    elif args.command == "serve":
        try:
            return serve(args.host, args.port, args.model_name)
        except KeyboardInterrupt:  # uvicorn raises the Ctrl-C again once every backend is stopped
            stage("interrupted: stopped")
            sys.exit(130)
    elif args.command == "dev":
        dagster = Path(sys.executable).with_name("dagster")
        os.execv(dagster, [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.port)])


if __name__ == "__main__":
    sys.exit(main())
