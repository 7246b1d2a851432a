"""One training process: TRL's SFTTrainer or DPOTrainer (adapted by fast_forward) with LoRA, its merged model saved whole.

Imports torch, TRL, PEFT and transformers at the top, so only the training process loads it (`train` runs it in
its own process; `python -m tao_dagster.training.trainer <job.json>` is each process of a data-parallel launch).
"""

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from tao_dagster.hardware import Precision
from tao_dagster.storage import fsync_folder, fsync_tree
from tao_dagster.training.fast_forward import add_lora_in_fp32, share_prompts
from tao_dagster.training.resume import last_saved_checkpoint
from tao_dagster.training.settings import TrainSettings

log = logging.getLogger(__name__)


def gpu_bf16(precision: Precision) -> bool:
    """Whether the weights themselves are bf16: on a GPU that halves the memory (PEFT keeps the adapters in fp32);
    a CPU keeps fp32 weights under bf16 autocast."""
    return precision.bf16 and torch.cuda.is_available()


def trainer_args(settings: TrainSettings, precision: Precision, work_dir: Path) -> dict:
    """The Trainer arguments every algorithm's round shares: its precision, seed and learning rate, a log entry every
    step, and a resumable checkpoint in `work_dir` every save_steps."""
    return dict(
        output_dir=str(work_dir),
        learning_rate=settings.learning_rate,
        bf16=precision.bf16,
        gradient_checkpointing=settings.gradient_checkpointing,
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        report_to="none",
        seed=settings.seed,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )


class TimeBudget(TrainerCallback):
    """Stop training after the step that ends `seconds` after `start` (0: never), so algorithms can be compared, or
    a round held to a deadline, at equal compute. A data-parallel launch stops every process at the same step: the
    first process's clock decides. A resumed run's budget counts from its own start."""

    def __init__(self, seconds: float, start: float):
        self.seconds, self.start = seconds, start

    def on_step_end(self, args, state, control, **kwargs):
        if not self.seconds:
            return control
        over = torch.tensor([float(time.perf_counter() - self.start >= self.seconds)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            over = over.to("cuda" if torch.cuda.is_available() else "cpu")
            torch.distributed.broadcast(over, src=0)
        if over.item():
            log.info("stopping at step %d of %d: the %.0f s training budget is spent", state.global_step, state.max_steps, self.seconds)
            control.should_training_stop = True
        return control


def dpo_config(settings: TrainSettings, precision: Precision, work_dir: Path, pairs: int) -> DPOConfig:
    return DPOConfig(
        **offline_args("dpo", settings, precision, work_dir, pairs),
        beta=settings.beta,
        loss_type=["sigmoid", "sft"] if settings.sft_weight else ["sigmoid"],
        loss_weights=[1.0, settings.sft_weight] if settings.sft_weight else None,
        precompute_ref_log_probs=settings.precompute_ref_log_probs,
    )


def sft_config(settings: TrainSettings, precision: Precision, work_dir: Path, targets: int) -> SFTConfig:
    """Loss on the answer only (TRL's default for prompt-completion records): the prompt is given, not learnt."""
    return SFTConfig(**offline_args("sft", settings, precision, work_dir, targets), completion_only_loss=True)


def offline_args(stage: str, settings: TrainSettings, precision: Precision, work_dir: Path, examples: int) -> dict:
    """What SFT and DPO configure alike, for `examples` records (their schedule: see TrainSettings.schedule); the
    batch is split across the processes of a data-parallel launch."""
    batch_size, epochs = settings.schedule(examples, stage)
    return dict(
        **trainer_args(settings, precision, work_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size // int(os.environ.get("WORLD_SIZE", "1")),
        max_length=settings.max_length,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        ddp_find_unused_parameters=False,  # LoRA trains every adapter it adds
    )


def lora_config(settings: TrainSettings) -> LoraConfig:
    return LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )


class AdaptedSFTTrainer(SFTTrainer):
    """SFTTrainer whose LoRA sums run in fp32 under CPU bf16 autocast, as DPO's do (one sequence per record: no prompt
    to share, no reference pass to save)."""

    def __init__(self, *args, precision: Precision, **kwargs):
        super().__init__(*args, **kwargs)
        if precision.bf16 and not gpu_bf16(precision):
            add_lora_in_fp32(self.model)


class AdaptedDPOTrainer(DPOTrainer):
    """DPOTrainer whose model takes fast_forward's forwards before its reference pass too, which DPOTrainer runs from
    __init__: the reference and the policy log-probs are then computed the same way."""

    def __init__(self, *args, settings: TrainSettings, precision: Precision, **kwargs):
        self.train_settings, self.precision = settings, precision  # before DPOTrainer.__init__, which needs them
        super().__init__(*args, **kwargs)
        self.adapt()

    def adapt(self) -> None:
        """Apply the forwards the settings ask for to the PEFT model; applying them again changes nothing."""
        if self.train_settings.share_prompts:
            share_prompts(self.model.get_base_model())
        if self.precision.bf16 and not gpu_bf16(self.precision):
            add_lora_in_fp32(self.model)

    def _precompute_ref_logps(self, *args, **kwargs):
        self.adapt()
        return super()._precompute_ref_logps(*args, **kwargs)


def save_merged(trainer, tokenizer, out_dir: Path, precision: Precision) -> None:
    """Merge the LoRA weights and save a standalone model in `precision`, replacing `out_dir` only once it is
    complete, so a kill never leaves a half-written checkpoint where the next round looks."""
    merged = trainer.model.merge_and_unload().to(precision.torch_dtype())
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed save left
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    fsync_tree(tmp)  # on disk before the rename says it is complete
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    fsync_folder(out_dir.parent)


def trained_tokens(stage: str, data: Dataset) -> int:
    """Tokens one epoch runs through the model: prompt+answer per SFT record, prompt+chosen and prompt+rejected per pair."""
    if stage == "sft":
        return sum(len(ids) for ids in data["input_ids"])
    lengths = zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"])
    return sum(2 * len(prompt) + len(chosen) + len(rejected) for prompt, chosen, rejected in lengths)


def training_metrics(
    stage: str, trainer, examples: int, settings: TrainSettings, precision: Precision, seconds: float, resume: Path | None
) -> dict:
    """The run's metrics from the Trainer's log, which holds every step, those before a resume included; `examples`
    counts the records given, TRL leaving out any whose prompt alone fills max_length."""
    history = [h for h in trainer.state.log_history if "loss" in h]
    last = history[-1] if history else {}
    batch_size, epochs = settings.schedule(examples, stage)
    done = trainer.state.global_step / trainer.state.max_steps if trainer.state.max_steps else 1.0  # < 1 if a budget stopped it
    tokens = done * epochs * trained_tokens(stage, trainer.train_dataset)
    loss_curve = [float(h["loss"]) for h in history]
    return {
        "train_loss": sum(loss_curve) / len(loss_curve) if loss_curve else float("nan"),
        "final_loss": float(last.get("loss", float("nan"))),
        "final_reward_accuracy": float(last.get("rewards/accuracies", float("nan"))),
        "final_reward_margin": float(last.get("rewards/margins", float("nan"))),
        "steps": int(trainer.state.global_step),
        "resumed_from_step": int(resume.name.removeprefix("checkpoint-")) if resume else 0,
        "examples": examples,
        "batch_size": batch_size,  # as scheduled for this many records
        "epochs": epochs,  # as scheduled; a time budget may have stopped it sooner
        "train_seconds": seconds,  # the reference pass included
        "train_tokens": int(tokens),  # times the epochs
        "tokens_per_second": tokens / seconds,
        "loss_curve": loss_curve,
        "precision": precision.dtype,
    }


def train_process(
    stage: str, model_path: str, data: Dataset, settings: TrainSettings, out_dir: Path, work_dir: Path, precision: Precision
) -> dict | None:
    """One training process of `stage` (sft: `data` are prompt-completion records; dpo: preference pairs); in a
    data-parallel launch only the first process saves and returns the metrics."""
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if gpu_bf16(precision) else torch.float32)
    start = time.perf_counter()  # the reference pass is part of training's cost
    if stage == "sft":
        trainer_class, args, adapt = AdaptedSFTTrainer, sft_config(settings, precision, work_dir, len(data)), {}
    else:
        trainer_class, args, adapt = AdaptedDPOTrainer, dpo_config(settings, precision, work_dir, len(data)), {"settings": settings}
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora_config(settings),
        precision=precision,
        callbacks=[TimeBudget(settings.max_train_seconds, start)],
        **adapt,
    )
    resume = last_saved_checkpoint(work_dir)
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    if not trainer.accelerator.is_main_process:
        return None
    save_merged(trainer, tokenizer, out_dir, precision)
    return training_metrics(stage, trainer, len(data), settings, precision, seconds, resume)


def main(job_file: str) -> None:
    """Entry point of each process of a data-parallel launch: the job and records launch_data_parallel wrote."""
    work_dir = Path(job_file).parent
    job = json.loads(Path(job_file).read_text())
    settings, precision = TrainSettings(**job["settings"]), Precision(**job["precision"])
    data = load_from_disk(work_dir / "records")
    metrics = train_process(job["stage"], job["model_path"], data, settings, Path(job["out_dir"]), work_dir, precision)
    if metrics is not None:
        (work_dir / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(sys.argv[1])
