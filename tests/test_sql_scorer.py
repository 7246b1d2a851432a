import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tao_dagster.domain import load_domain
from tao_dagster.ingest import parse_log_file
from tao_dagster.rewards import Scored, build_scorers, extract_sql
from tao_dagster.sql_sandbox import GRACE_SECONDS, Sandbox, connect

DEMO = Path(__file__).parents[1] / "assets" / "text_to_sql"
SCRIPT = "CREATE TABLE t AS SELECT range AS i, NULL AS n FROM range(5);"
TIMEOUT = 1.0
RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
CROSS_JOIN = "SELECT count(*) FROM range(1000000) a, range(1000000) b"
UNINTERRUPTIBLE = "SELECT levenshtein(repeat('a', 200000), repeat('b', 200000))"  # one call of about a minute
MEMORY_BOMB = "SELECT length(repeat('x', 2000000000))"  # 2 GB that DuckDB's memory_limit does not count


@pytest.fixture
def database(tmp_path) -> Path:
    path = tmp_path / "db.sql"
    path.write_text(SCRIPT)
    return path


def sql_scorer(database: Path, **params):
    return build_scorers([{"kind": "sql_execution", "database": str(database), "timeout_seconds": TIMEOUT, **params}])[0]


def responses(*texts: str) -> list[Scored]:
    return [Scored("p1", "question", text) for text in texts]


def test_extract_sql_from_fence_field_or_bare_text():
    assert extract_sql("Here:\n```sql\nSELECT 1;\n```\nDone") == "SELECT 1;"
    assert extract_sql("```SQL\nSELECT 1 FROM t WHERE") == "SELECT 1 FROM t WHERE"  # cut off by max_tokens
    assert extract_sql("```\nSELECT 2\n```") == "SELECT 2"
    assert extract_sql("  SELECT 3  ") == "SELECT 3"
    assert extract_sql('{"sql": "SELECT 4", "note": "x"}', field="sql") == "SELECT 4"
    assert extract_sql('{"note": "x"}', field="sql") is None
    assert extract_sql("```sql\n```") is None


def test_score_ladder_and_its_params(database):
    texts = [
        "I do not know",  # does not parse
        "SELECT * FROM missing_table",  # parses, fails
        "SELECT 1; SELECT 2",  # rejected: two statements
        "DELETE FROM t",  # rejected: not a read query
        "SELECT * FROM t WHERE i > 10",  # empty
        "SELECT n FROM t",  # all NULL
        "SELECT * FROM t",  # 5 rows: over max_rows
        "```sql\nWITH x AS (SELECT i FROM t) SELECT max(i) FROM x;\n```",  # sane
    ]
    assert sql_scorer(database, max_rows=4).score(responses(*texts)) == [0.0, 0.2, 0.2, 0.2, 0.5, 0.5, 0.5, 1.0]
    custom = sql_scorer(database, max_rows=5, parsed_score=0.1, executed_score=0.3)
    assert custom.score(responses(*texts[1:])) == [0.1, 0.1, 0.1, 0.3, 0.3, 1.0, 1.0]


def test_a_duckdb_file_is_scored_on_a_copy_and_left_unchanged(tmp_path):
    path = tmp_path / "shop.duckdb"
    with duckdb.connect(path) as con:
        con.execute(SCRIPT)
    before = path.read_bytes()
    assert sql_scorer(path).score(responses("SELECT count(*) FROM t", "SELECT * FROM nowhere")) == [1.0, 0.2]
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["shop.duckdb"]


def test_version_follows_database_content_and_params_not_location(tmp_path, database):
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(database, other / "db.sql")
    spec = {"kind": "sql_execution", "database": "db.sql"}
    here, moved = build_scorers([spec], tmp_path)[0], build_scorers([spec], other)[0]
    assert here.params.database == str(database) and here.version == moved.version
    assert build_scorers([{**spec, "max_rows": 10}], tmp_path)[0].version != here.version
    (other / "db.sql").write_text(SCRIPT.replace("range(5)", "range(6)"))
    assert build_scorers([spec], other)[0].version != here.version


@pytest.mark.parametrize(
    ("statement", "cause"),
    [
        ("SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
        ("SELECT * FROM read_text('/etc/passwd')", "file system operations are disabled"),
        ("SELECT * FROM '/etc/passwd'", "Table with name /etc/passwd does not exist"),  # no replacement scan of files
        ("SELECT * FROM glob('/*')", "file system operations are disabled"),
        ("SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')", "file system operations are disabled"),
        ("COPY t TO '{tmp}/out.csv'", "file system operations are disabled"),
        ("ATTACH '{tmp}/other.duckdb' AS other", "file system operations are disabled"),
        ("INSTALL httpfs", "file system operations are disabled"),
        ("LOAD httpfs", "Loading external extensions is disabled"),
        ("SET enable_external_access = true", "configuration has been locked"),
        ("RESET lock_configuration", "configuration has been locked"),
        ("SET memory_limit = '100GB'", "configuration has been locked"),
        ("CREATE TABLE u AS SELECT 1", "read-only mode"),
        ("SELECT * FROM secret_frame", "does not exist"),  # a Python variable in the calling scope
    ],
)
def test_locked_connection_refuses_even_without_the_statement_filter(tmp_path, statement, cause):
    copy = tmp_path / "copy.duckdb"
    with duckdb.connect(copy) as con:
        con.execute(SCRIPT)
    secret_frame = pl.DataFrame({"secret": ["leaked"]})  # noqa: F841 (what a replacement scan would find)
    with connect(str(copy), memory_mb=256) as con, pytest.raises(duckdb.Error, match=cause):
        con.execute(statement.format(tmp=tmp_path)).fetchall()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.duckdb"]


def test_hostile_answers_score_low_in_bounded_time_and_leave_nothing(tmp_path, database):
    hostile = [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
        f"COPY t TO '{tmp_path}/out.csv'",
        f"ATTACH '{tmp_path}/other.duckdb' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SELECT 1; COPY t TO '/tmp/x.csv'",
        RUNAWAY,
        CROSS_JOIN,
        MEMORY_BOMB,
    ]
    before = set(tmp_path.iterdir())
    start = time.monotonic()
    scores = sql_scorer(database, memory_mb=512).score(responses(*hostile, "SELECT count(*) FROM t"))
    elapsed = time.monotonic() - start
    assert dict(zip(hostile, scores)) == dict.fromkeys(hostile, 0.2)
    assert scores[-1] == 1.0  # the sandbox still answers after all that
    assert elapsed < 2 * TIMEOUT + 3  # two statements ran into the time limit; the rest fail at once
    assert set(tmp_path.iterdir()) == before


def test_uninterruptible_call_kills_the_worker_and_the_next_statement_gets_a_new_one(database):
    leftovers = set(Path(tempfile.gettempdir()).glob("tao-sql-*"))
    with Sandbox(database, timeout_seconds=TIMEOUT) as box:
        start = time.monotonic()
        stopped = box.run(UNINTERRUPTIBLE)
        assert time.monotonic() - start < TIMEOUT + GRACE_SECONDS + 1
        # Almost always DuckDB is inside the one long levenshtein call when the time runs out and the worker is
        # killed; seen once in CI: the interrupt landed before the call and DuckDB stopped it itself. Both stop it.
        assert stopped.stage == "failed" and ("killed" in stopped.error or "Interrupted" in stopped.error)
        assert box.run("SELECT max(i) FROM t").stage == "executed"
        pid = box.worker.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert set(Path(tempfile.gettempdir()).glob("tao-sql-*")) == leftovers


def test_demo_domain_scores_a_correct_answer_above_broken_ones():
    domain = load_domain(DEMO / "domain.yaml")
    scorers = domain.build_scorers()
    correct = (
        "```sql\nSELECT c.name, count(*) AS orders\nFROM orders o JOIN customers c USING (customer_id)\n"
        "GROUP BY c.name ORDER BY orders DESC LIMIT 1;\n```"
    )
    wrong_table = "```sql\nSELECT name, count(*) FROM order_items GROUP BY name;\n```"
    prose = "The customer with the most orders is probably Ada."
    items = [Scored("p1", "Which customer placed the most orders?", text) for text in (correct, wrong_table, prose)]
    per_scorer = {s.name: s.score(items) for s in scorers}
    assert per_scorer["execution"] == [1.0, 0.2, 0.0]
    reward = [sum(s.weight * per_scorer[s.name][k] for s in scorers) for k in range(3)]
    assert reward[0] > reward[1] > reward[2]
    questions = parse_log_file(DEMO / "logs" / "2026-11-10.jsonl")
    assert len(questions.rows) == 30 and not questions.bad
