"""The DuckDB warehouse, read and written through polars.

Keys (DESIGN.md, "Keys that make it incremental"):
- prompt: hash of the normalised messages; `prompt_sources` keeps every (partition, file, line) that carried it;
- candidate: prompt x policy version x strategy x sampling x sample index;
- score: candidate x scorer name x scorer version;
- checkpoint: parent policy x algorithm x config x the exact training data;
- held-out answer: policy version x prompt.
Each write is one transaction, so a killed write leaves all of its rows or none. Connections are
short-lived because a DuckDB file admits one process at a time: a process that finds the file locked
(a sensor reading while a run writes, say) waits for it.
"""

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl

SCHEMA = """
create table if not exists prompts (
    prompt_id varchar primary key, messages varchar, text varchar,
    heldout boolean, first_partition varchar, created_at timestamp default current_timestamp);
create table if not exists prompt_sources (
    partition varchar, source_file varchar, line integer, prompt_id varchar, duplicate boolean,
    primary key (partition, line));
create table if not exists quarantine (
    partition varchar, source_file varchar, line integer, reason varchar, raw varchar,
    primary key (partition, line));
create table if not exists candidates (
    candidate_id varchar primary key, prompt_id varchar, partition varchar, policy_version varchar,
    strategy varchar, sampling varchar, sample_index integer, response varchar,
    prompt_tokens integer, completion_tokens integer, finish_reason varchar, engine varchar,
    created_at timestamp default current_timestamp);
create table if not exists scores (
    candidate_id varchar, prompt_id varchar, scorer varchar, scorer_version varchar, score double,
    primary key (candidate_id, scorer, scorer_version));
create table if not exists checkpoints (
    checkpoint_id varchar primary key, parent varchar, algorithm varchar, config varchar,
    data_hash varchar, path varchar, mlflow_run_id varchar, model_version varchar,
    metrics varchar, created_at timestamp default current_timestamp);
create table if not exists eval_answers (
    policy_version varchar, prompt_id varchar, response varchar, completion_tokens integer,
    primary key (policy_version, prompt_id));
"""


LOCK_WAIT_SECONDS = 300.0


class Warehouse:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as con:
            con.execute(SCHEMA)

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as err:
                if "lock" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            yield con
        finally:
            con.close()

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with self.connect() as con:
            return con.sql(sql, params=params or None).pl()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.connect() as con:
            con.begin()
            try:
                yield con
                con.commit()
            except BaseException:
                con.rollback()
                raise

    @staticmethod
    def insert(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, on_conflict: str = "replace") -> None:
        """Insert rows by column name; `replace` overwrites rows with the same key, `ignore` keeps the old."""
        if frame.height:
            con.register("incoming", frame)
            con.execute(f"insert or {on_conflict} into {table} by name select * from incoming")
            con.unregister("incoming")

    def upsert(self, table: str, frame: pl.DataFrame, on_conflict: str = "replace") -> None:
        with self.transaction() as con:
            self.insert(con, table, frame, on_conflict)
