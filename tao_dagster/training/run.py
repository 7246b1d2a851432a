"""How a round trains: the algorithm's stages (SFT, DPO, SFT then DPO from it, or GRPO) with TRL and LoRA, each in
this process or (SFT, DPO) data-parallel under `accelerate launch`, resuming a killed run of the same checkpoint
where it stopped.

Light to import (the Dagster definitions import it): torch, TRL and the rest load with the training process,
tao_dagster.training.trainer, which is also what each process of a data-parallel launch runs.
"""

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from tao_dagster.hardware import Precision, compute_precision
from tao_dagster.training.settings import TrainSettings

STAGES = {"sft": ["sft"], "dpo": ["dpo"], "sft+dpo": ["sft", "dpo"], "grpo": ["grpo"]}


def train(
    model_path: str,
    records: dict[str, list[dict]],
    settings: TrainSettings,
    out_dir: Path,
    work_dir: Path,
    processes: int = 1,
    precision: Precision | None = None,
    reward=None,
) -> dict:
    """Train `settings.algorithm` from `model_path` on `records` (per stage: "sft" prompt-completion records, "dpo"
    pairs, "grpo" prompts, which `reward` (grpo.domain_reward) scores the policy's samples of), merge the LoRA weights
    and save a standalone model to `out_dir`.

    sft+dpo saves the merged SFT model under `work_dir` and runs DPO from it, so DPO's reference is the SFT model
    (what DPO should stay near) and a run killed during DPO does not repeat SFT. A time budget (max_train_seconds) is
    shared out: each stage gets an equal part of what the earlier ones left, and trains at least one step. Returns the last stage's metrics,
    with steps, seconds and tokens summed over the stages and each stage's own under `stages`.
    """
    precision = precision or compute_precision()
    stages, model, metrics = STAGES[settings.algorithm], model_path, {}
    for i, stage in enumerate(stages):
        spent = sum(m["train_seconds"] for m in metrics.values())
        budget = settings.max_train_seconds and max(1e-3, (settings.max_train_seconds - spent) / (len(stages) - i))
        stage_settings = settings.model_copy(update={"max_train_seconds": budget})
        last = i == len(stages) - 1
        target = out_dir if last else work_dir / f"{stage}-model"
        done = work_dir / f"{stage}-metrics.json"
        if not last and done.is_file() and (target / "config.json").is_file():
            metrics[stage] = json.loads(done.read_text())
        else:
            metrics[stage] = train_stage(
                stage, model, records[stage], stage_settings, target, work_dir / stage, processes, precision, reward
            )
            done.write_text(json.dumps(metrics[stage]))
        model = str(target)
    return summed(metrics, {stage: len(records[stage]) for stage in stages})


def summed(stages: dict[str, dict], sizes: dict[str, int]) -> dict:
    """One round's metrics from its stages': the last stage's losses, the totals of steps, time and tokens."""
    last = list(stages.values())[-1]
    seconds, tokens = sum(m["train_seconds"] for m in stages.values()), sum(m["train_tokens"] for m in stages.values())
    return {
        **last,
        "steps": sum(m["steps"] for m in stages.values()),
        "train_seconds": seconds,
        "train_tokens": tokens,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "pairs": sizes.get("dpo", 0),
        "targets": sizes.get("sft", 0),
        "prompts": sizes.get("grpo", 0),
        "stages": {stage: {k: v for k, v in m.items() if k != "loss_curve"} for stage, m in stages.items()},
        "loss_curve": [loss for m in stages.values() for loss in m["loss_curve"]],
    }


def train_stage(
    stage: str,
    model_path: str,
    records: list[dict],
    settings: TrainSettings,
    out_dir: Path,
    work_dir: Path,
    processes: int = 1,
    precision: Precision | None = None,
    reward=None,
) -> dict:
    """Train one stage ("sft" on prompt-completion records, "dpo" on {"prompt", "chosen", "rejected"} pairs, both
    TRL conversational; "grpo" on prompts, see grpo.train_grpo) with LoRA, merge it and save a standalone model to
    `out_dir`.

    Trainer checkpoints go to `work_dir` every `save_steps`, and a run that finds one there (a killed run of the same
    checkpoint id) resumes from it. DPOTrainer computes the reference log-probs from the parent before the
    checkpoint's adapter is loaded, so a resumed run has the same reference as the first. Returns the training
    metrics and the loss curve of all steps, those before a resume included. `processes` > 1 trains data-parallel,
    one process per GPU, under `accelerate launch`; `batch_size` stays the records per optimiser step, split across
    the processes, so the checkpoint means the same. `precision` defaults to this machine's (bf16 autocast where
    bf16 is fast, else fp32); the merged model is saved in it, so the next round loads it as it was trained.
    """
    if settings.batch_size % processes:
        raise ValueError(f"batch_size {settings.batch_size} must be a multiple of the {processes} training processes")
    precision = precision or compute_precision()
    work_dir.mkdir(parents=True, exist_ok=True)
    if stage == "grpo":
        if processes > 1:
            raise ValueError("grpo trains in one process (its reward runs the domain's scorers in it); use train_processes 1")
        from tao_dagster.training.grpo import train_grpo

        return train_grpo(model_path, records, reward, settings, out_dir, work_dir, precision)
    if processes > 1:
        return launch_data_parallel(stage, model_path, records_dataset(records), settings, out_dir, work_dir, processes, precision)
    from tao_dagster.training.trainer import train_process

    return train_process(stage, model_path, records_dataset(records), settings, out_dir, work_dir, precision)


def records_dataset(records: list[dict]):
    """The records as a Dataset whose conversations are stored as JSON: as Arrow structs every message would get every
    field any message has (a tool call's arguments the keys of every tool call's), changing the prompts rendered."""
    from datasets import Dataset, Features, Json, Value

    return Dataset.from_list(
        records, features=Features({k: Value("string") if k == "tools" else Json() for k in (records[0] if records else {})})
    )


def launch_data_parallel(
    stage: str, model_path: str, records, settings: TrainSettings, out_dir: Path, work_dir: Path, processes: int, precision: Precision
) -> dict:
    """Run `train_process` in `processes` processes under `accelerate launch` (torch.distributed: NCCL on GPUs,
    gloo on CPUs), each reading the job written here (see trainer.main), and return the metrics its first process
    writes. The records are saved to disk first, so the tokenized copy the first process caches beside them is there
    for the others (an in-memory dataset's temporary cache is not)."""
    import subprocess

    shutil.rmtree(work_dir / "records", ignore_errors=True)
    records.save_to_disk(work_dir / "records")
    job = work_dir / "job.json"
    job.write_text(
        json.dumps(
            {
                "stage": stage,
                "model_path": model_path,
                "settings": settings.model_dump(),
                "out_dir": str(out_dir),
                "precision": asdict(precision),
            }
        )
    )
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # bf16 is set by `precision`
    subprocess.run([*launch, "-m", "tao_dagster.training.trainer", str(job)], check=True)
    return json.loads((work_dir / "metrics.json").read_text())
