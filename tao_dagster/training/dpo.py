"""How a round trains: TRL DPO with LoRA in this process, or data-parallel under `accelerate launch`, resuming
a killed run of the same checkpoint from its last Trainer checkpoint.

Light to import (the Dagster definitions import it): torch, TRL and the rest load with the training process,
tao_dagster.training.trainer, which is also what each process of a data-parallel launch runs.
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

from tao_dagster.hardware import Precision, compute_precision
from tao_dagster.training.settings import TrainSettings


def train_dpo(
    model_path: str,
    pairs: list[dict],
    settings: TrainSettings,
    out_dir: Path,
    work_dir: Path,
    processes: int = 1,
    precision: Precision | None = None,
) -> dict:
    """Train LoRA adapters with DPO, merge them and save a standalone model to `out_dir`.

    `pairs` are TRL conversational records: {"prompt": [messages], "chosen": [msg], "rejected": [msg]}.
    Trainer checkpoints go to `work_dir` every `save_steps`, and a run that finds one there (a killed run of
    the same checkpoint id) resumes from it. DPOTrainer computes the reference log-probs from the parent
    before the checkpoint's adapter is loaded, so a resumed run has the same reference as the first.
    Returns the training metrics and the loss curve of all steps, those before a resume included.
    `processes` > 1 trains data-parallel, one process per GPU, under `accelerate launch`; `batch_size`
    stays the pairs per optimiser step, split across the processes, so the checkpoint means the same.
    `precision` defaults to this machine's (bf16 autocast where bf16 is fast, else fp32); the merged model is
    saved in it, so the next round loads it as it was trained.
    """
    if settings.batch_size % processes:
        raise ValueError(f"batch_size {settings.batch_size} must be a multiple of the {processes} training processes")
    precision = precision or compute_precision()
    if processes > 1:
        return launch_data_parallel(model_path, pairs_dataset(pairs), settings, out_dir, work_dir, processes, precision)
    from tao_dagster.training.trainer import train_process

    return train_process(model_path, pairs_dataset(pairs), settings, out_dir, work_dir, precision)


def pairs_dataset(pairs: list[dict]):
    """The records as a Dataset whose conversations are stored as JSON: as Arrow structs every message would get every
    field any message has (a tool call's arguments the keys of every tool call's), changing the prompts rendered."""
    from datasets import Dataset, Features, Json, Value

    return Dataset.from_list(
        pairs, features=Features({k: Value("string") if k == "tools" else Json() for k in (pairs[0] if pairs else {})})
    )


def launch_data_parallel(
    model_path: str, pairs, settings: TrainSettings, out_dir: Path, work_dir: Path, processes: int, precision: Precision
) -> dict:
    """Run `train_process` in `processes` processes under `accelerate launch` (torch.distributed: NCCL on GPUs,
    gloo on CPUs), each reading the job written here (see trainer.main), and return the metrics its first process
    writes. The pairs are saved to disk first, so the tokenized copy the first process caches beside them is there
    for the others (an in-memory dataset's temporary cache is not)."""
    import shutil
    import subprocess

    shutil.rmtree(work_dir / "pairs", ignore_errors=True)
    pairs.save_to_disk(work_dir / "pairs")
    job = work_dir / "job.json"
    job.write_text(
        json.dumps({"model_path": model_path, "settings": settings.model_dump(), "out_dir": str(out_dir), "precision": asdict(precision)})
    )
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # bf16 is set by `precision`
    subprocess.run([*launch, "-m", "tao_dagster.training.trainer", str(job)], check=True)
    return json.loads((work_dir / "metrics.json").read_text())
