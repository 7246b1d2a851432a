"""`tao-dagster demo`, the README's main command, as a user runs it: two flywheel rounds, then a rerun."""

import os
import subprocess
import sys
from pathlib import Path

from .conftest import write_banking_log


def test_demo_runs_two_rounds_and_a_rerun_has_nothing_to_do(tmp_path, tiny_model_dir, learnable_domain_file):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_banking_log(incoming / "day1.csv", 0, 30)
    write_banking_log(incoming / "day2.csv", 30, 30)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {
        "TAO_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "home" / "dagster"),
        "TAO_DOMAIN": str(learnable_domain_file),
        "TAO_BASE_MODEL": str(tiny_model_dir),
        "TAO_ENGINE": "transformers",
    }
    demo = [str(Path(sys.executable).with_name("tao-dagster")), "demo", "--rounds", "2", "--logs-from", str(incoming)]

    first = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "home" / "logs").iterdir()) == ["day1.csv", "day2.csv"]
    assert "round 1 of 2" in first.stdout and "round 2 of 2" in first.stdout
    assert "over 1 log-file partitions (day1.csv .. day1.csv)" in first.stdout
    assert "over 1 log-file partitions (day2.csv .. day2.csv)" in first.stdout
    assert first.stdout.count("promotion gate: ") == 2

    again = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "log-file partitions" not in again.stdout and "promotion gate" not in again.stdout
    assert again.stdout.count("since the last checkpoint: no round to run") == 2
