"""Failures that a retry cannot mend: a bad setting, or input the stage needs and does not have.

The core raises StageError with what to do about it; the Dagster layer turns it into a failure that is not retried.
"""


class StageError(Exception):
    pass
