"""What every step shares: the retry policy, how core failures and interrupts end a step, and metadata from a summary."""

import functools
import threading
from pathlib import Path

import dagster as dg

from tao_dagster.errors import StageError
from tao_dagster.evaluation import Markdown

# For the steps whose failures can pass: a generation engine that fails to start, MLflow or S3 I/O. Retried
# after 10 s, then 30 s; each retry resumes from what the failed attempt stored. Deterministic errors (a core
# StageError: bad configuration, no training pairs) fail at once.
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)
INTERRUPTED = "interrupted (Ctrl-C, or the run was terminated): not retried"
interrupt_received = threading.Event()  # set in this process once a step was interrupted


def stage_step(step):
    """A step that calls the core: a StageError fails it without retries, and so does an interrupt.

    Dagster retries an interrupted step that has a retry policy (a preempted pod's SIGTERM arrives as an
    interrupt), so one Ctrl-C in `tao-dagster demo` would be retried twice. An interrupt is a request to stop:
    the step fails at once, its engine closed on the way out. Lost pods are retried whole by run monitoring.
    """

    @functools.wraps(step)
    def run(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except StageError as err:
            raise dg.Failure(str(err), allow_retries=False) from err
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError) as err:
            interrupt_received.set()
            raise dg.Failure(INTERRUPTED, allow_retries=False) from err

    return run


def as_metadata(summary: dict) -> dict:
    """A stage's summary as Dagster metadata: Markdown as Markdown, paths and s3:// URIs as paths, dicts and lists as JSON."""

    def value(v):
        if isinstance(v, Markdown):
            return dg.MetadataValue.md(str(v))
        if isinstance(v, Path) or (isinstance(v, str) and v.startswith("s3://")):
            return dg.MetadataValue.path(str(v))
        if isinstance(v, dict | list):
            return dg.MetadataValue.json(v)
        return v

    return {k: value(v) for k, v in summary.items()}
