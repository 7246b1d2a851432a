"""Run untrusted SQL (a model's answer) against a DuckDB database without letting it reach anything else.

Statements run in a worker process (this file, run as a script) on a private copy of the database,
opened read-only with no file system or network access, no extensions and its configuration locked, so
the limits hold even for a statement that slips past the check that only one read query may run.
DuckDB interrupts a query only between steps: a single long function call (`levenshtein` on huge strings)
or allocation (`repeat('x', 4000000000)`, which `memory_limit` does not count) runs on regardless. Hence
the process: the OS caps its memory, and a worker that overruns its time limit is killed and replaced.
"""

import json
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

GRACE_SECONDS = 1.0  # past the time limit before the worker is killed, for what DuckDB cannot interrupt
STARTUP_SECONDS = 30.0


@dataclass(frozen=True)
class Outcome:
    stage: str  # "unparsable" (no statement), "failed" (rejected, error or over a limit) or "executed"
    rows: int = 0  # rows returned, counted up to max_rows + 1
    non_null: bool = False  # whether any value in those rows is not NULL
    error: str = ""


class Sandbox:
    """A worker process holding a locked-down connection to a private copy of `database`.

    `database` is a DuckDB file, or a self-contained .sql script (CREATE and INSERT statements) that is
    built into the copy. Use as a context manager: the copy and the worker go away on exit.
    """

    def __init__(self, database: Path, timeout_seconds: float = 5.0, max_rows: int = 1000, memory_mb: int = 1024):
        self.database = Path(database)
        self.settings = {"timeout_seconds": float(timeout_seconds), "max_rows": int(max_rows), "memory_mb": int(memory_mb)}
        self.worker: subprocess.Popen | None = None

    def __enter__(self) -> "Sandbox":
        self.workdir = tempfile.TemporaryDirectory(prefix="tao-sql-")
        copy = Path(self.workdir.name) / "database.duckdb"
        if self.database.suffix == ".sql":
            with duckdb.connect(copy) as con:
                con.execute(self.database.read_text())
        else:
            shutil.copyfile(self.database, copy)
        self.settings["database"] = str(copy)
        return self

    def __exit__(self, *exc) -> None:
        self._stop()
        self.workdir.cleanup()

    def run(self, sql: str) -> Outcome:
        if self.worker is None:
            self._start()
        self.worker.stdin.write(json.dumps(sql) + "\n")
        self.worker.stdin.flush()
        reply = self._reply(self.settings["timeout_seconds"] + GRACE_SECONDS)
        if not reply:  # overran in a call DuckDB cannot interrupt, or died (out of memory)
            self._stop()
            return Outcome("failed", error="worker killed or died: over the time or memory limit")
        return Outcome(**json.loads(reply))

    def _start(self) -> None:
        command = [sys.executable, __file__, json.dumps(self.settings)]
        self.worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=self.workdir.name)
        if self._reply(STARTUP_SECONDS) != "ready":
            self._stop()
            raise RuntimeError(f"the SQL sandbox could not open {self.database} (see the worker's error above)")

    def _reply(self, timeout: float) -> str:
        readable, _, _ = select.select([self.worker.stdout], [], [], timeout)
        return self.worker.stdout.readline().strip() if readable else ""

    def _stop(self) -> None:
        if self.worker is not None:
            worker, self.worker = self.worker, None
            with worker:  # closes the pipes and waits
                worker.kill()


def execute(con: duckdb.DuckDBPyConnection, sql: str, timeout_seconds: float, max_rows: int) -> dict:
    """Run one statement if it is a single read query; fetch at most max_rows + 1 rows. Worker side."""
    with con.cursor() as cur:
        try:
            statements = cur.extract_statements(sql)
        except duckdb.Error as err:
            return {"stage": "unparsable", "error": str(err)[:300]}
        if not statements:
            return {"stage": "unparsable", "error": "no statement"}
        if len(statements) > 1 or statements[0].type != duckdb.StatementType.SELECT:
            return {"stage": "failed", "error": "rejected: only a single read query may run"}
        timer = threading.Timer(timeout_seconds, cur.interrupt)
        timer.start()
        try:
            rows = cur.execute(statements[0]).fetchmany(max_rows + 1)
        except Exception as err:  # untrusted SQL may fail in any way (conversion, memory): it fails alone
            return {"stage": "failed", "error": f"{type(err).__name__}: {err}"[:300]}
        finally:
            timer.cancel()
            timer.join()
    return {"stage": "executed", "rows": len(rows), "non_null": any(v is not None for row in rows for v in row)}


def connect(database: str, memory_mb: int) -> duckdb.DuckDBPyConnection:
    """The worker's connection: read-only, no files, URLs, ATTACH or extensions, settings locked."""
    config = {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "memory_limit": f"{memory_mb // 2}MB",  # DuckDB's own limit comes first, with a clean error
        "threads": 1,
        "temp_directory": "",  # never spill to disk
        "lock_configuration": True,  # no SET or RESET can undo the above
    }
    return duckdb.connect(database, read_only=True, config=config)


def serve(settings: dict) -> None:
    """The worker: cap its memory, open the copy, then answer one JSON line per statement."""
    limit = settings["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    con = connect(settings["database"], settings["memory_mb"])
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(execute(con, json.loads(line), settings["timeout_seconds"], settings["max_rows"])), flush=True)


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
