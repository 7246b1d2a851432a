"""The DuckDB warehouse, read and written through polars.

Keys (DESIGN.md, "Keys that make it incremental"):
- prompt: hash of the normalised messages; `prompt_sources` keeps every (partition, file, line) that carried it;
- candidate: prompt x policy version x strategy x sampling x sample index;
- score: candidate x scorer name x scorer version;
- checkpoint: parent policy x algorithm x config x the exact training data;
- held-out answer: policy version x prompt; a held-out candidate (the best-of-N ceiling) is keyed like a candidate;
- skipped request (too long for the model's window): stage (the table it was for) x candidate key.
Each write is one transaction, so a killed write leaves all of its rows or none. Connections are
short-lived because a DuckDB file admits one process at a time: a process that finds the file locked
(a sensor reading while a run writes, say) waits for it.
"""

import contextlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from tao_dagster.ingest import heldout_part

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
create table if not exists eval_candidates (
    candidate_id varchar primary key, prompt_id varchar, policy_version varchar, strategy varchar, sampling varchar,
    response varchar, completion_tokens integer);
create table if not exists eval_answers (
    policy_version varchar, prompt_id varchar, response varchar, completion_tokens integer,
    primary key (policy_version, prompt_id));
create table if not exists skipped_requests (
    stage varchar, candidate_id varchar, prompt_id varchar, policy_version varchar, strategy varchar,
    prompt_tokens integer, reason varchar, created_at timestamp default current_timestamp,
    primary key (stage, candidate_id));
-- What a log says beyond the prompt (tao_dagster.traces): its tool definitions, and per logged call its request
-- id and time, the model that answered and its reply.
alter table prompts add column if not exists tools varchar;
alter table prompt_sources add column if not exists request_id varchar;
alter table prompt_sources add column if not exists requested_at timestamp;
alter table prompt_sources add column if not exists model varchar;
alter table prompt_sources add column if not exists reply varchar;
"""
SOURCE_DETAILS = ("request_id", "requested_at", "model", "reply")
# A file's rows as ingestion streams them to store_partition: an accepted row, or a quarantined one (reason, raw).
STAGED = pa.schema(
    [
        ("line", pa.int64()),
        ("source_file", pa.string()),
        ("prompt_id", pa.string()),
        ("messages", pa.string()),
        ("tools", pa.string()),
        ("text", pa.string()),
        ("heldout", pa.bool_()),
        ("request_id", pa.string()),
        ("requested_at", pa.timestamp("us")),
        ("model", pa.string()),
        ("reply", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)
STAGED_TYPES = {pa.int64(): "bigint", pa.string(): "varchar", pa.bool_(): "boolean", pa.timestamp("us"): "timestamp"}


# The training prompts of a list of partitions (the query's parameter): first seen there, and not held out.
TRAINING = "not heldout and first_partition in (select unnest(?))"
LOCK_WAIT_SECONDS = 300.0
# DuckDB's memory while it stores a file's rows (80% of RAM by default): it spills the rest to <warehouse>.tmp, so
# its working memory does not grow with the file. The primary keys' indexes cannot spill: placing the rows is
# granted INDEX_BYTES a key of prompts and prompt_sources besides (about 35 measured), or DuckDB runs out of memory.
INGEST_MEMORY_MB = 512
INDEX_BYTES = 64


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

    # Prompts

    def store_partition(self, key: str, batches: Iterable[pa.RecordBatch]) -> dict[str, int]:
        """Replace what partition `key` holds by one file's rows, in one transaction; the counts of accepted,
        duplicate and quarantined rows, and of the held-out prompts among the accepted.

        `batches` (of STAGED) are the file's rows as they are read: an accepted row has no `reason`, a quarantined
        one its reason and raw text. They stream into a table of the transaction, then SQL places them: a row is a
        duplicate when its prompt came first in another partition or earlier in this file. The check and the
        writes share the transaction, which holds the file's lock, so a run ingesting another file at the same
        time cannot also take a shared prompt as new. The counts are read back from the tables written.
        """
        with self.transaction() as con:
            con.execute(f"set memory_limit = '{INGEST_MEMORY_MB}MB'; set preserve_insertion_order = false")
            con.execute("delete from prompt_sources where partition = ?", [key])
            con.execute("delete from quarantine where partition = ?", [key])
            con.execute(f"create table staged ({', '.join(f'{f.name} {STAGED_TYPES[f.type]}' for f in STAGED)})")
            self.insert_stream(con, "staged", batches)
            (keys,) = con.execute(
                "select (select count(*) from prompts) + (select count(*) from prompt_sources) + 2 * (select count(*) from staged)"
            ).fetchone()
            con.execute(f"set memory_limit = '{INGEST_MEMORY_MB + keys * INDEX_BYTES // 2**20}MB'")
            self.place_staged(con, key)
            con.execute("drop table staged")
            accepted, duplicates = con.execute(
                "select count(*) filter (where not duplicate), count(*) filter (where duplicate) from prompt_sources where partition = ?",
                [key],
            ).fetchone()
            (quarantined,) = con.execute("select count(*) from quarantine where partition = ?", [key]).fetchone()
            (heldout,) = con.execute(
                """select count(*) from prompt_sources s join prompts p using (prompt_id)
                   where s.partition = ? and not s.duplicate and p.heldout""",
                [key],
            ).fetchone()
        return {"accepted": accepted, "duplicates": duplicates, "quarantined": quarantined, "heldout": heldout}

    @staticmethod
    def insert_stream(con: duckdb.DuckDBPyConnection, table: str, batches: Iterable[pa.RecordBatch]) -> None:
        """Insert batches (of STAGED) as they come, in one statement; an error making them is raised as itself,
        not as the DuckDB error that wraps it."""
        failed = []

        def reported():
            try:
                yield from batches
            except BaseException as err:
                failed.append(err)
                raise

        con.register("incoming", pa.RecordBatchReader.from_batches(STAGED, reported()))
        try:
            con.execute(f"insert into {table} select * from incoming")
        except duckdb.Error:
            if failed:
                raise failed[0] from None
            raise
        finally:
            con.unregister("incoming")

    @staticmethod
    def place_staged(con: duckdb.DuckDBPyConnection, key: str) -> None:
        """Move the staged rows of partition `key` into prompts, prompt_sources and quarantine. A prompt's first row
        in the file is accepted unless the prompt came first in another partition; every other row is a duplicate."""
        con.execute(
            """create temp table accepted as
               select prompt_id, min(line) as line from staged s where reason is null
               and not exists (select 1 from prompts p where p.prompt_id = s.prompt_id and p.first_partition <> $key)
               group by prompt_id""",
            {"key": key},
        )
        con.execute(
            """insert or ignore into prompts by name
               select prompt_id, messages, tools, text, heldout, $key as first_partition
               from staged semi join accepted using (prompt_id, line)""",
            {"key": key},
        )
        con.execute(
            f"""insert into prompt_sources by name
                select $key as partition, source_file, line, prompt_id, a.line is null as duplicate, {", ".join(SOURCE_DETAILS)}
                from staged s left join accepted a using (prompt_id, line) where reason is null""",
            {"key": key},
        )
        con.execute(
            "insert into quarantine by name select $key as partition, source_file, line, reason, raw from staged where reason is not null",
            {"key": key},
        )
        con.execute("drop table accepted")

    def training_prompts(self, partitions: list[str]) -> pl.DataFrame:
        """Prompts first seen in these partitions that are not held out: prompt_id, messages, tools, first_partition."""
        return self.query(
            f"select prompt_id, messages, tools, first_partition from prompts where {TRAINING} order by prompt_id", [partitions]
        )

    def heldout_prompts(self, part: str | None = None, limit: int = 0) -> pl.DataFrame:
        """Held-out prompts of one part (`gate` or `test`, see ingest.heldout_part; both if None) in their fixed
        hashed order, at most `limit` of them (0: all)."""
        prompts = self.query("select prompt_id, messages, tools, text from prompts where heldout order by prompt_id")
        if part is not None:
            prompts = prompts.filter(pl.col("prompt_id").map_elements(heldout_part, return_dtype=pl.String) == part)
        return prompts.head(limit) if limit else prompts

    def production_replies(self, prompt_ids: list[str]) -> pl.DataFrame:
        """The reply production gave to each of these prompts that a log holds one for (prompt_id, model, reply): that
        of its earliest logged call with a reply, in the prompt's first partition first."""
        return self.query(
            """select prompt_id, model, reply from (
                   select s.prompt_id, s.model, s.reply, row_number() over (
                       partition by s.prompt_id order by s.partition <> p.first_partition, s.partition, s.line) as n
                   from prompt_sources s join prompts p using (prompt_id)
                   where s.reply is not null and s.prompt_id in (select unnest(?::varchar[])))
               where n = 1 order by prompt_id""",
            [prompt_ids],
        )

    # Candidates and scores

    def replace_candidates(self, strategy: str, frame: pl.DataFrame) -> None:
        """Make `frame` the candidates of `strategy` for its prompts, in one transaction; a candidate already stored
        keeps its row and its scores."""
        with self.transaction() as con:
            con.register("incoming", frame)
            con.execute(
                """delete from candidates where strategy = ? and prompt_id in (select prompt_id from incoming)
                   and candidate_id not in (select candidate_id from incoming)""",
                [strategy],
            )
            con.unregister("incoming")
            self.insert(con, "candidates", frame, "ignore")

    def stored_candidate_count(self, partitions: list[str], policy_version: str, samples: pl.DataFrame) -> tuple[int, int]:
        """(training prompts in these partitions, how many candidates the policy has stored of their `samples`
        (strategy, sampling, sample_index)): a candidate is keyed by these and its prompt and policy, so nothing is hashed."""
        with self.connect() as con:
            con.register("samples", samples)
            return con.execute(
                f"""with training as (select prompt_id from prompts where {TRAINING})
                    select (select count(*) from training),
                           (select count(*) from candidates join samples using (strategy, sampling, sample_index)
                            where policy_version = ? and prompt_id in (select prompt_id from training))""",
                [partitions, policy_version],
            ).fetchone()

    def missing_candidates(self, partitions: list[str], policy_version: str, samples: pl.DataFrame, after: str, limit: int) -> pl.DataFrame:
        """The first `limit` training prompts of these partitions after prompt id `after`, in prompt id order
        (prompt_id, messages, tools, first_partition), each with `missing`: the `sample` numbers of `samples` the
        policy has no candidate of yet (an empty list when it has them all, so the next batch starts after it)."""
        with self.connect() as con:
            con.register("samples", samples)
            return con.sql(
                f"""with ids as (select prompt_id from prompts where {TRAINING} and prompt_id > ? order by prompt_id limit ?),
                    batch as (select prompt_id, messages, tools, first_partition from prompts semi join ids using (prompt_id)),
                    stored as (
                        select prompt_id, strategy, sampling, sample_index from candidates where policy_version = ?
                        and prompt_id between (select min(prompt_id) from ids) and (select max(prompt_id) from ids)),
                    missing as (
                        select prompt_id, list(sample order by sample) as missing from batch cross join samples
                        anti join stored using (prompt_id, strategy, sampling, sample_index) group by prompt_id)
                    select batch.*, coalesce(missing, []) as missing from batch left join missing using (prompt_id) order by prompt_id""",
                params=[partitions, after, limit, policy_version],
            ).pl()

    def candidate_stats(self, policy_version: str, partitions: list[str]) -> pl.DataFrame:
        """Per strategy and sampling: candidates, mean completion tokens and the share cut at max_tokens."""
        return self.query(
            """select strategy, sampling, count(*) as candidates, round(avg(completion_tokens), 1) as mean_tokens,
                      round(avg(case when finish_reason = 'length' then 1 else 0 end), 3) as truncated_share
               from candidates where policy_version = ? and partition in (select unnest(?))
               group by strategy, sampling order by strategy, sampling""",
            [policy_version, partitions],
        )

    def candidates(self, partitions: list[str] | None = None) -> pl.DataFrame:
        """Candidates with their prompt's messages, tools and text, in these partitions (all if None)."""
        where = "" if partitions is None else "where c.partition in (select unnest(?))"
        return self.query(
            f"""select c.candidate_id, c.prompt_id, c.partition, c.policy_version, c.strategy, c.sampling,
                       c.response, c.completion_tokens, p.messages, p.tools, p.text
                from candidates c join prompts p using (prompt_id) {where}""",
            [] if partitions is None else [partitions],
        )

    def scores(self, partitions: list[str] | None = None) -> pl.DataFrame:
        """Every stored score of the candidates in these partitions (all if None), of every scorer version."""
        where = "" if partitions is None else "where c.partition in (select unnest(?))"
        return self.query(
            f"""select s.candidate_id, s.prompt_id, s.scorer, s.scorer_version, s.score
                from scores s join candidates c using (candidate_id) {where}""",
            [] if partitions is None else [partitions],
        )

    def new_scored_prompts(self, policy_version: str) -> int:
        """Training prompts with scored candidates from this policy, generated since the last checkpoint was trained."""
        return self.query(
            """select count(distinct c.prompt_id) as n from candidates c
               where c.policy_version = ?
                 and c.created_at > coalesce((select max(created_at) from checkpoints), '-infinity'::timestamp)
                 and exists (select 1 from scores s where s.candidate_id = c.candidate_id)""",
            [policy_version],
        )["n"][0]

    # Checkpoints and held-out answers

    def checkpoint(self, checkpoint_id: str) -> dict | None:
        found = self.query("select * from checkpoints where checkpoint_id = ?", [checkpoint_id])
        return found.row(0, named=True) if found.height else None

    def checkpoint_of_run(self, mlflow_run_id: str) -> str | None:
        found = self.query("select checkpoint_id from checkpoints where mlflow_run_id = ?", [mlflow_run_id])
        return found["checkpoint_id"][0] if found.height else None

    def eval_candidates(self, policy_version: str) -> pl.DataFrame:
        """Candidates generated for held-out test prompts, for measuring the best-of-N ceiling only: never trained on."""
        return self.query(
            "select candidate_id, prompt_id, strategy, sampling, response, completion_tokens from eval_candidates where policy_version = ?",
            [policy_version],
        )

    def answers(self, policy_version: str) -> pl.DataFrame:
        """The policy's stored held-out answers: prompt_id, response, completion_tokens."""
        return self.query("select prompt_id, response, completion_tokens from eval_answers where policy_version = ?", [policy_version])
