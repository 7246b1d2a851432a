"""One GRPO training process: TRL's GRPOTrainer with LoRA, its merged model saved whole as DPO saves it.

Of DPO's speed-ups (docs/performance.md) two apply and are taken: the LoRA sums in fp32 under bf16 autocast on a CPU
(add_lora_in_fp32) and gradient checkpointing off (TRL's default is on). The others do not apply as they are. There is
no reference pass to precompute: the completions are sampled during training, and at grpo_beta 0 TRL runs no
reference at all. TRL's GRPO forward already sends only completion tokens through its chunked LM head. share_prompts
is written for DPO's pairs; in GRPO a prompt is shared by its group's completions, which TRL shuffles across the
step's batch, so running each prompt once would need a forward of its own. On the embedded model about half of a CPU
step is sampling, which that would not touch. With grpo_beta above 0 under bf16 the KL term is a difference of log-probs
from TRL's head under autocast, in bf16 (TRL's cast_lm_head_to_fp32 refuses tied embeddings, as the embedded model's).

Imports torch, TRL and transformers at the top, so only the training process loads it (train_grpo does).
"""

import logging
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from tao_dagster.hardware import Precision
from tao_dagster.training.fast_forward import add_lora_in_fp32
from tao_dagster.training.resume import last_saved_checkpoint
from tao_dagster.training.settings import TrainSettings
from tao_dagster.training.trainer import TimeBudget, gpu_bf16, lora_config, save_merged, trainer_args

log = logging.getLogger(__name__)


def grpo_config(settings: TrainSettings, precision: Precision, work_dir: Path) -> GRPOConfig:
    """TRL's configuration. A step samples grpo_generations completions of each of grpo_prompts_per_step prompts and
    trains on them once: the step's batch is TRL's generation batch, so it always holds whole groups, as TRL requires.

    Sampling: transformers `generate` in this process, always on a CPU. With grpo_use_vllm on a GPU, TRL's vLLM
    integration samples instead (`use_vllm`, `vllm_mode`): `colocate` runs a vLLM engine in this process on the
    training GPU (TRL's vllm_gpu_memory_utilization of 0.3 of its memory) and loads the policy's weights into it before
    each generation; `server` sends the prompts to a `trl vllm-serve` at grpo_vllm_server and pushes the weights to it.
    TRL then recomputes the log-probs with the trainer's model and corrects for vLLM's (importance sampling). The vLLM
    path cannot run on this project's CPU machines and is untested here.
    """
    gpu = torch.cuda.is_available()
    if settings.grpo_use_vllm and not gpu:
        log.warning("grpo_use_vllm is set but there is no GPU: transformers samples the groups")
    return GRPOConfig(
        **trainer_args(settings, precision, work_dir),
        num_generations=settings.grpo_generations,
        per_device_train_batch_size=settings.grpo_prompts_per_step * settings.grpo_generations,
        max_steps=settings.grpo_steps,
        max_completion_length=settings.grpo_max_completion_length,
        temperature=settings.grpo_temperature,
        beta=settings.grpo_beta,
        lr_scheduler_type="cosine",  # no warm-up: a step's LR of 0 would waste its generation
        use_vllm=settings.grpo_use_vllm and gpu,
        vllm_mode=settings.grpo_vllm_mode,
        vllm_server_base_url=settings.grpo_vllm_server,
    )


class ResumableGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose prompt order is a function of the epoch. TRL's sampler draws each epoch's order from one
    generator seeded once, so a resumed run, whose new sampler starts over, would see other prompts in other orders
    than the run it continues; seeded per epoch (the Trainer calls `set_epoch`), it sees the same."""

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        if sampler.shuffle:
            sampler.set_epoch = lambda epoch: sampler.generator.manual_seed(self.args.seed + epoch)
        return sampler


def grpo_process(
    model_path: str, prompts: Dataset, reward, settings: TrainSettings, out_dir: Path, work_dir: Path, precision: Precision
) -> dict:
    """Train, resuming from the last Trainer checkpoint in `work_dir` if there is one, save the merged model, and
    return the metrics."""
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if gpu_bf16(precision) else torch.float32)
    start = time.perf_counter()
    trainer = ResumableGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=grpo_config(settings, precision, work_dir),
        train_dataset=prompts,
        processing_class=tokenizer,
        peft_config=lora_config(settings),
        callbacks=[TimeBudget(settings.max_train_seconds, start)],
    )
    if precision.bf16 and not gpu_bf16(precision):
        add_lora_in_fp32(trainer.model)
    resume = last_saved_checkpoint(work_dir)
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    save_merged(trainer, tokenizer, out_dir, precision)
    return grpo_metrics(trainer, len(prompts), settings, precision, seconds, resume)


def grpo_metrics(trainer: GRPOTrainer, prompts: int, settings: TrainSettings, precision: Precision, seconds: float, resume) -> dict:
    """The run's metrics from the Trainer's log, which holds every step, those before a resume included: DPO's
    (training_metrics) and the reward of the sampled groups, which GRPO optimises directly."""
    history = [h for h in trainer.state.log_history if "loss" in h]
    loss_curve = [float(h["loss"]) for h in history]
    reward_curve = [float(h["reward"]) for h in history]
    scorers = [k for k in (history[0] if history else {}) if k.startswith("scorers/")]  # logged by domain_reward
    tokens = int(trainer.state.num_input_tokens_seen)  # prompt and completion tokens of every sampled completion
    nan = float("nan")
    return {
        "train_loss": sum(loss_curve) / len(loss_curve) if loss_curve else nan,
        "final_loss": loss_curve[-1] if loss_curve else nan,
        "steps": int(trainer.state.global_step),
        "resumed_from_step": int(resume.name.removeprefix("checkpoint-")) if resume else 0,
        "prompts": prompts,
        "batch_size": settings.grpo_prompts_per_step * settings.grpo_generations,  # completions per step
        "epochs": trainer.state.global_step * settings.grpo_prompts_per_step / prompts,  # passes over the prompts
        "train_seconds": seconds,
        "train_tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "loss_curve": loss_curve,
        "precision": precision.dtype,
        "first_reward": reward_curve[0] if reward_curve else nan,  # mean reward of the first step's groups
        "final_reward": reward_curve[-1] if reward_curve else nan,
        "reward_std": float(history[-1]["reward_std"]) if history else nan,  # of the last step's completions
        "zero_std_fraction": sum(h["frac_reward_zero_std"] for h in history) / len(history) if history else nan,
        "reward_curve": reward_curve,
        "scorer_curves": {k.removeprefix("scorers/"): [float(h[k]) for h in history] for k in scorers},  # where a rise comes from
    }
