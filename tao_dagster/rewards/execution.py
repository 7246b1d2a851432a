"""Scorers that run code: a Python function of the user's own, and the answer's SQL executed against
the domain's database in a sandbox."""

import functools
import hashlib
import importlib
import inspect
import math
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field

from tao_dagster.rewards.base import FILE, Scorer, ScorerParams, extract_field
from tao_dagster.sql_sandbox import Outcome, Sandbox


class PythonScorer(Scorer):
    """A scorer of your own: `callable: "package.module:function"`, importable where the code location runs.

    The function gets the whole list of `Scored` items (prompt_id, prompt, response; never a label) and
    returns one score in [0, 1] per item, so it can batch, or compare a prompt's candidates (then set
    `group: true`). The version hashes the source of the function's module, so editing the function, or a
    helper beside it, re-scores.
    """

    kind = "python"

    class Params(ScorerParams):
        callable: str = Field(description='The function, as "package.module:function".')
        group: bool = Field(False, description="The function compares a prompt's candidates: leave it out where a prompt has one answer.")

    def check(self):
        target = self.params.callable
        module_name, _, attribute = target.partition(":")
        if not module_name or not attribute:
            raise self.invalid(f"callable must look like 'package.module:function', not {target!r}")
        try:
            module = importlib.import_module(module_name)
            self.fn = functools.reduce(getattr, attribute.split("."), module)
        except Exception as err:  # an import runs arbitrary code: any failure is the callable's
            raise self.invalid(f"cannot import {target!r}: {type(err).__name__}: {err}") from err
        if not callable(self.fn):
            raise self.invalid(f"{target!r} is not callable")
        try:
            self.source = inspect.getsource(module)
        except (OSError, TypeError) as err:
            raise self.invalid(f"{target!r} has no Python source to version: {err}") from err
        self.group = self.params.group

    def identity(self):
        return super().identity() | {"source": hashlib.sha256(self.source.encode()).hexdigest()}

    def score(self, items):
        scores = [float(s) for s in self.fn(items)]
        if len(scores) != len(items) or not all(math.isfinite(s) for s in scores):
            raise RuntimeError(
                f"scorer {self.name!r} (python): {self.params.callable} must return one finite score per item "
                f"(got {len(scores)} for {len(items)} items)"
            )
        return scores


SQL_FENCE = re.compile(r"```[ \t]*(?:sql)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_sql(text: str, field: str | None = None) -> str | None:
    """The query in a response: the JSON field `field` when given, else a ```sql block (closed or cut off), else the text."""
    if field:
        return extract_field(text, field)
    fence = SQL_FENCE.search(text)
    return (fence.group(1) if fence else text).strip() or None


class SqlExecutionScorer(Scorer):
    """Execution verifier for text-to-SQL: run the answer's query against the domain's DuckDB database.

    No label says which result is right, but a query that runs and returns a plausible result beats one
    that does not. The ladder (the middle levels are parameters):

    - 0: no SQL, or nothing that parses as SQL;
    - `parsed_score`: parses, but is rejected (not a single read query) or fails to run (error, sandbox
      refusal, over the time or memory limit);
    - `executed_score`: runs, but the result is empty, all NULL or over `max_rows` rows;
    - 1: runs and returns 1 to `max_rows` rows, not all NULL.

    Each scoring call works on a private copy of the database inside `Sandbox` (read-only, no files,
    network or extensions, time and memory limits).
    """

    kind = "sql_execution"

    class Params(ScorerParams):
        database: Annotated[str, FILE] = Field(description="A DuckDB file, or a .sql script that builds one.")
        field: str | None = Field(None, description="Read the query from this JSON field, not from a sql code block or the whole response.")
        timeout_seconds: float = Field(5.0, gt=0, description="The time limit of one query.")
        max_rows: int = Field(1000, gt=0, description="The most rows a plausible result has: more looks like a runaway join.")
        memory_mb: int = Field(1024, gt=0, description="The memory limit of the sandbox.")
        parsed_score: float = Field(0.2, description="The score of a query that parses but is rejected or fails to run.")
        executed_score: float = Field(0.5, description="The score of a query that runs to an empty, all-NULL or oversized result.")

    def score(self, items):
        p = self.params
        with Sandbox(Path(p.database), p.timeout_seconds, p.max_rows, p.memory_mb) as sandbox:
            return [self._one(sandbox, extract_sql(i.response, p.field)) for i in items]

    def _one(self, sandbox: Sandbox, sql: str | None) -> float:
        outcome = sandbox.run(sql) if sql else Outcome("unparsable")
        if outcome.stage == "unparsable":
            return 0.0
        if outcome.stage == "failed":
            return self.params.parsed_score
        if 0 < outcome.rows <= self.params.max_rows and outcome.non_null:
            return 1.0
        return self.params.executed_score
