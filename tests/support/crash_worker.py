"""What tests/test_crash_resume.py and tests/test_training_grpo.py run in a subprocess and kill with SIGKILL:
candidate generation, DPO and GRPO training, a tuning round about to record its registered checkpoint, and a
warehouse write. `python -m tests.support.crash_worker <what> <args>` from the repository root."""

import signal
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa

from tao_dagster.defs.candidates.assets import candidate_responses
from tao_dagster.defs.checkpoint.assets import tuned_checkpoint
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.resources import default_resources
from tao_dagster.rewards import build_scorers
from tao_dagster.training import TrainSettings, domain_reward, train_grpo, train_stage
from tao_dagster.warehouse import Warehouse

PARTITION = "day1.csv"


def pipeline_resources(home: Path, model_dir: str, domain_file: str, **policy_settings) -> dict:
    """A project home of its own, with the tiny model run by transformers."""
    (home / "logs").mkdir(parents=True, exist_ok=True)
    policy = {"base_model": model_dir, "engine": "transformers", **policy_settings}
    return default_resources(home, {"domain": {"domain_file": domain_file}, "policy": policy})


def materialize(assets: list, resources: dict, **kwargs) -> dg.ExecuteInProcessResult:
    """Materialize the log-file partition in an instance of this process, as a fresh run worker would."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(log_files.name, [PARTITION])
    return dg.materialize(assets, instance=instance, resources=resources, partition_key=PARTITION, **kwargs)


def training_pairs() -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"Classify query {i}: where is my card?"}],
            "chosen": [{"role": "assistant", "content": '{"topic": "card"}'}],
            "rejected": [{"role": "assistant", "content": f"no idea, query {i}"}],
        }
        for i in range(12)
    ]


# 12 pairs, 2 per step, 2 epochs: 12 steps, a checkpoint every 2.
TRAIN_SETTINGS = TrainSettings(batch_size=2, epochs=2, learning_rate=1e-2, save_steps=2, min_steps=0)


# GRPO on tests/test_training_grpo.py's learnable tiny model: 4 prompts, 2 a step in groups of 4 completions of 8
# tokens, 12 steps, a checkpoint every 3. The reward asks the answer to open with a vowel, a rule about the first
# token, which is as much as a tiny random model can learn in a dozen steps.
GRPO_SETTINGS = TrainSettings(learning_rate=2e-2, grpo_steps=12, grpo_max_completion_length=8, grpo_temperature=1.0, save_steps=3)
GRPO_SCORERS = [{"name": "opens_with_vowel", "kind": "regex", "pattern": r"^\s*[aeiouAEIOU]"}]


def grpo_prompts() -> list[dict]:
    return [
        {"prompt": [{"role": "user", "content": f"Classify query {i}: {text}"}], "prompt_id": f"p{i}", "text": text}
        for i, text in enumerate(["where is my card?", "can I get cash?", "my transfer failed", "change my address"])
    ]


def frame(partition: str, rows: int) -> pl.DataFrame:
    return pl.DataFrame({"candidate_id": [f"{partition}-{i}" for i in range(rows)], "partition": partition, "response": "an answer " * 5})


def generate(home: str, model_dir: str, domain_file: str, generation_chunk: str) -> None:
    materialize([candidate_responses], pipeline_resources(Path(home), model_dir, domain_file, generation_chunk=int(generation_chunk)))


def train(model_dir: str, out_dir: str, work_dir: str) -> None:
    train_stage("dpo", model_dir, training_pairs(), TRAIN_SETTINGS, Path(out_dir), Path(work_dir))


def train_grpo_tiny(model_dir: str, out_dir: str, work_dir: str) -> None:
    train_grpo(model_dir, grpo_prompts(), domain_reward(build_scorers(GRPO_SCORERS)), GRPO_SETTINGS, Path(out_dir), Path(work_dir))


# Settings of tuned_checkpoint (its default algorithm) for a handful of prompts of the tiny model.
TUNE_CONFIG = {"batch_size": 4, "epochs": 1, "min_chosen_reward": 0.0, "min_margin": 0.0, "max_pairs": 0, "min_steps": 0}


def tune(home: str, model_dir: str, domain_file: str) -> None:
    """tuned_checkpoint, held for the kill after it registered the model version, before the warehouse records the
    checkpoint."""
    upsert = Warehouse.upsert

    def upsert_after_the_kill(self, table, frame, on_conflict="replace"):
        if table == "checkpoints":
            print("registered", flush=True)
            signal.pause()
        upsert(self, table, frame, on_conflict)

    Warehouse.upsert = upsert_after_the_kill
    run_config = {"ops": {"tuned_checkpoint": {"config": TUNE_CONFIG}}}
    dg.materialize([tuned_checkpoint], resources=pipeline_resources(Path(home), model_dir, domain_file), run_config=run_config)


def write(path: str, committed_rows: str, killed_rows: str, kill_at: str) -> None:
    """Commit one partition, then insert another in a transaction that the kill interrupts before its commit:
    `inserting`, inside the insert statement, which reads its rows from a stream that stops for the kill after two
    batches; `inserted`, after the statement, with the commit to come. Prints the file's size at each stage, to
    show how far the uncommitted rows had reached."""
    db = Warehouse(path)
    db.upsert("candidates", frame("committed", int(committed_rows)))
    print(f"committed {Path(path).stat().st_size}", flush=True)
    rows = frame("killed", int(killed_rows)).to_arrow()
    with db.transaction() as con:
        if kill_at == "inserting":

            def batches():
                for n, batch in enumerate(rows.to_batches(max_chunksize=len(rows) // 8), start=1):
                    yield batch
                    print(f"inserting batch {n} {Path(path).stat().st_size}", flush=True)
                    if n == 2:
                        signal.pause()  # inside the statement: DuckDB asks this stream for the next batch

            con.register("incoming", pa.RecordBatchReader.from_batches(rows.schema, batches()))
            con.execute("insert into candidates by name select * from incoming")
        else:
            db.insert(con, "candidates", pl.from_arrow(rows))
            print(f"inserted {Path(path).stat().st_size}", flush=True)
            signal.pause()  # the transaction stays open until the test kills this process


if __name__ == "__main__":
    {"generate": generate, "train": train, "train_grpo": train_grpo_tiny, "tune": tune, "write": write}[sys.argv[1]](*sys.argv[2:])
