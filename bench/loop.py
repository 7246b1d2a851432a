"""The loop, timed: traffic -> log -> scores -> round -> served champion, on the embedded model and the banking demo.

`tao-dagster serve` runs in a new project home, the embedded model on vLLM behind it. The banking demo's queries
(assets/banking/logs/, the first --queries of them) go through the official `openai` client at --rate requests
per second, open loop (a request leaves on time whether or not the previous one is answered). Then the steps a
deployment goes through, each timed from the end of the one before:
- traffic: the requests, each one's latency through the proxy;
- log: from the last answer until the log files holding every exchange are closed and listed (rotation);
- scores: the sensor's tick and the scoring run of the new partitions (raw_prompts -> candidate_responses ->
  reward_scores), as the sensor's run would do them;
- round: tuned_checkpoint -> promotion_gate -> eval_report, started at once (the schedule would wait for its cron);
- served champion: from the moment the gate moves the champion alias until the server answers with the new
  checkpoint (its poll, the new backend's start-up and the switch), if the gate promotes.
Prints the table and writes bench/results/loop.json.

    .venv/bin/python bench/loop.py --queries 120 --rate 2     # about 12 minutes on 2 cores
"""

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import median, print_table, project_home, write_result

from tao_dagster.ingest import parse_log_file
from tao_dagster.paths import PROJECT_ROOT
from tests.support.devserver import tao_serve, wait_for

LOGS = PROJECT_ROOT / "assets" / "banking" / "logs"


def banking_conversations(count: int) -> list[list[dict]]:
    """The demo's queries in file order, read by the project's own log parser (CSV and JSONL files alike)."""
    return [row.messages for path in sorted(LOGS.iterdir()) for row in parse_log_file(path).rows][:count]


def send_at_rate(client, model: str, conversations: list[list[dict]], rate: float, max_tokens: int) -> list[float]:
    """Each request's latency in seconds; request i leaves at i / rate seconds."""
    began = time.monotonic()

    def one(i: int) -> float:
        time.sleep(max(0.0, began + i / rate - time.monotonic()))
        sent = time.monotonic()
        client.chat.completions.create(model=model, messages=conversations[i], max_tokens=max_tokens, temperature=0)
        return time.monotonic() - sent

    with ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(one, range(len(conversations))))


class Watcher(threading.Thread):
    """When the champion alias moves (MLflow) and when the server first answers with another checkpoint."""

    def __init__(self, tracking, client):
        super().__init__(daemon=True)
        self.tracking, self.client, self.running = tracking, client, True
        self.promoted_at = self.served_at = None
        self.served = None

    def run(self) -> None:
        while self.running and self.served_at is None:
            if self.promoted_at is None and self.tracking.champion_run_id():
                self.promoted_at = time.monotonic()
            (card,) = self.client.models.list().data
            if card.checkpoint_id:
                self.served_at, self.served = time.monotonic(), card
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="project home (default: a new temporary folder)")
    parser.add_argument("--queries", type=int, default=120, help="banking queries sent (the demo has 500)")
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second")
    parser.add_argument("--rotate-seconds", type=float, default=10.0, help="TAO_SERVE_ROTATE_SECONDS of the server")
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="TAO_SERVE_POLL_SECONDS of the server")
    args = parser.parse_args()
    home = project_home(args.home, "tao-bench-loop-")
    os.environ.update({"TAO_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")})
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import dagster as dg
    import openai

    from tao_dagster.cli import score, tuning_round, use_project_instance
    from tao_dagster.defs.resources import default_resources
    from tao_dagster.settings import core_settings
    from tests.conftest import sensor_tick

    use_project_instance()
    settings, conversations = core_settings(), banking_conversations(args.queries)
    env = {"TAO_SERVE_ROTATE_SECONDS": str(args.rotate_seconds), "TAO_SERVE_POLL_SECONDS": str(args.poll_seconds)}
    started = time.monotonic()
    with tao_serve(env, home / "serve.log") as (url, server):
        up = time.monotonic() - started
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        began = first_request = time.monotonic()
        latencies = send_at_rate(client, model, conversations, args.rate, settings.domain.load().eval_sampling.max_tokens)
        steps = [{"step": "traffic", "seconds": time.monotonic() - began}]

        began = time.monotonic()

        def all_logged() -> bool:
            files = settings.logs.list_files()
            return sum(len(Path(f.name).read_text().splitlines()) for f in files.values()) >= len(conversations)

        wait_for("every exchange in a closed log file", all_logged, 300, server, poll=0.5)
        steps.append({"step": "log", "seconds": time.monotonic() - began})

        began = time.monotonic()
        instance, resources = dg.DagsterInstance.get(), default_resources()
        keys = sorted(r.partition_key for r in sensor_tick(instance, resources["logs"], None).run_requests)
        score(instance, resources, keys)
        steps.append({"step": "scores", "seconds": time.monotonic() - began})

        watcher = Watcher(settings.tracking, client)
        watcher.start()
        began = time.monotonic()
        report = tuning_round(instance, resources)
        steps.append({"step": "round", "seconds": time.monotonic() - began})
        if settings.tracking.champion_run_id():
            wait_for("the server to answer with the new champion", lambda: watcher.served_at, 900, server)
            steps.append({"step": "served champion (from the promotion)", "seconds": watcher.served_at - watcher.promoted_at})
        watcher.running = False
        end = "served champion" if watcher.served_at else "end of the round"
        steps.append({"step": f"total, first request to {end}", "seconds": (watcher.served_at or time.monotonic()) - first_request})
    for row in steps:
        row["seconds"] = round(row["seconds"], 1)
    traffic = {
        "requests": len(latencies),
        "rate_per_s": args.rate,
        "latency_median_s": round(median(latencies), 3),
        "latency_p95_s": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 3),
        "latency_max_s": round(max(latencies), 3),
    }
    print_table(
        steps, f"The loop: {len(conversations)} banking queries at {args.rate:g}/s through tao-dagster serve (server up in {up:.0f} s)"
    )
    print_table([traffic], "Requests through the proxy")
    print(f"gate: {report.get('gate')}; partitions: {keys}")
    write_result(
        "loop",
        {
            "home": str(home),
            "settings": {**vars(args), "model": settings.policy.base_model},
            "server_start_s": round(up, 1),
            "steps": steps,
            "traffic": traffic,
            "partitions": keys,
            "gate": report.get("gate"),
            "served": watcher.served.model_dump() if watcher.served else None,
            "report": {k: v for k, v in report.items() if isinstance(v, int | float | str)},
        },
    )


if __name__ == "__main__":
    main()
