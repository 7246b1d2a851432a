"""The code location of tests/test_faults.py's queued runs: `held` takes the production instance's one run slot
until the test creates the file named by TAO_TEST_RELEASE, so that `queued` waits in the queue meanwhile."""

import os
import time
from pathlib import Path

import dagster as dg


@dg.op
def wait_for_release() -> None:
    while not Path(os.environ["TAO_TEST_RELEASE"]).exists():
        time.sleep(0.2)


@dg.op
def answer() -> int:
    return 42


@dg.job
def held():
    wait_for_release()


@dg.job
def queued():
    answer()


defs = dg.Definitions(jobs=[held, queued])
