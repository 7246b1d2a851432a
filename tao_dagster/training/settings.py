"""The training settings, one place for their defaults and meaning: the Dagster launchpad shows the same help."""

import math
from typing import Literal

from pydantic import BaseModel, Field

# sft: each prompt's best answer as the target; dpo: its best against clearly worse answers; sft+dpo: sft, then dpo
# from it; grpo: online, the policy samples a group per prompt and the domain's scorers reward it.
Algorithm = Literal["sft", "dpo", "sft+dpo", "grpo"]


class TrainSettings(BaseModel):
    """One round's optimisation step, with LoRA. The defaults fit one round's training on a 2-core CPU in 5 minutes."""

    algorithm: Algorithm = Field(
        "sft+dpo",
        description="sft, dpo, sft+dpo (sft then dpo from it, one checkpoint) or grpo (online); sft+dpo had the best "
        "gate-half (validation) reward on both demos at equal training time, level with sft on banking (docs/results.md).",
    )
    beta: float = Field(0.1, description="DPO temperature: higher stays closer to the reference.")
    sft_weight: float = Field(1.0, description="Weight of an NLL term on the chosen answer (RPO); 0 for pure DPO.")
    learning_rate: float = Field(2e-4, description="AdamW learning rate of the LoRA weights.")
    epochs: float = Field(1.0, description="Passes of DPO over the pairs; more where min_steps needs them.")
    sft_epochs: float = Field(
        2.0, description="Passes of SFT (sft, and sft+dpo's warm start) over the targets; more where min_steps needs them."
    )
    batch_size: int = Field(8, description="Pairs per optimiser step; halved for sets too small to reach min_steps.")
    min_steps: int = Field(
        16,
        ge=0,
        description="Optimiser steps a round reaches on small data, by more epochs (up to max_epochs), then smaller batches (0: off).",
    )
    max_epochs: float = Field(4.0, description="Most passes min_steps may ask for: more would overfit a small set.")
    lora_r: int = Field(16, description="LoRA rank, on all linear layers.")
    lora_alpha: int = Field(32, description="LoRA scaling numerator.")
    max_length: int = Field(384, description="Longest prompt+answer in tokens; TRL truncates longer ones.")
    min_margin: float = Field(0.1, description="Smallest reward gap between chosen and rejected, in reward units: the noise floor.")
    min_z_margin: float = Field(
        1.0, description="Smallest gap between chosen and rejected in standard deviations of the prompt's own rewards."
    )
    min_chosen_z: float = Field(
        0.5, description="The chosen answer (the prompt's best) must be this many of the prompt's standard deviations above its mean."
    )
    min_chosen_reward: float = Field(
        0.0, description="Optional absolute floor on the chosen answer's reward (0: off); pairs are chosen relative to each prompt."
    )
    pairs_per_prompt: int = Field(
        2, ge=1, description="Pairs per prompt: its best against this many clearly worse answers, those of the same form first."
    )
    max_pairs: int = Field(
        160,
        description="Cap on pairs (0: all), every prompt's first pair before any second, same-form pairs then widest margins first; "
        "160 sizes a round for a 2-core CPU (about 6 min).",
    )
    precompute_ref_log_probs: bool = Field(True, description="One reference pass before training instead of one per step.")
    share_prompts: bool = Field(
        True, description="Run each pair's prompt once for both answers (same loss, less work); needs gradient_checkpointing off."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory for big models, a third more compute (TRL's default)."
    )
    save_steps: int = Field(
        5, ge=1, description="Save a resumable Trainer checkpoint every this many steps: a killed round resumes from the last one."
    )
    max_train_seconds: float = Field(
        300.0,
        ge=0,
        description="Stop training after the step that ends this many seconds in (0: no limit); sft+dpo gives SFT half, "
        "DPO the rest. 300 holds a round's training on a 2-core CPU to 5 minutes (a GPU finishes the schedule sooner); "
        "where it stops the schedule, the checkpoint depends on the machine's speed.",
    )
    seed: int = 0
    # grpo: online. Each step samples grpo_generations completions of grpo_prompts_per_step prompts from the policy
    # and rewards them with the domain's scorers; learning_rate, lora_r, lora_alpha, gradient_checkpointing,
    # save_steps and seed apply as above. The defaults fit a round of the embedded model on a 2-core CPU in minutes.
    grpo_generations: int = Field(
        4, ge=2, description="Completions sampled per prompt (GRPO's group): each is rewarded against its group's mean."
    )
    grpo_prompts_per_step: int = Field(
        2, ge=1, description="Prompts per optimiser step; a step trains on prompts_per_step x generations completions."
    )
    grpo_steps: int = Field(16, ge=1, description="Optimiser steps of a round, each on freshly sampled groups of shuffled prompts.")
    grpo_max_completion_length: int = Field(48, ge=1, description="Longest sampled completion in tokens (the domain's max_tokens).")
    grpo_temperature: float = Field(0.8, gt=0, description="Sampling temperature of the groups; the log-probs are taken at it too.")
    grpo_beta: float = Field(
        0.0, ge=0, description="KL penalty toward the parent (0: none, and no reference pass; LoRA's few steps stay close)."
    )
    grpo_use_vllm: bool = Field(False, description="Sample the groups with vLLM on GPUs (TRL use_vllm); a CPU samples with transformers.")
    grpo_vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM in the training process, sharing its GPUs; server: a `trl vllm-serve` at grpo_vllm_server."
    )
    grpo_vllm_server: str = Field("http://127.0.0.1:8000", description="The `trl vllm-serve` base URL, for grpo_vllm_mode server.")

    def schedule(self, examples: int, stage: str = "dpo") -> tuple[int, float]:
        """(batch size, epochs) that train `examples` records of `stage` (sft or dpo): the largest batch, halved down
        to 2, that reaches min_steps within max_epochs, with the fewest whole epochs that do (never fewer than the
        stage's own epochs); a set too small even for that trains max_epochs at the smallest batch. A function of
        the settings and the data, both in the checkpoint id, so the same data trains the same way."""
        least = self.sft_epochs if stage == "sft" else self.epochs
        batch, most = self.batch_size, max(least, self.max_epochs)
        while True:
            epochs = max(least, math.ceil(self.min_steps / max(1, math.ceil(examples / batch))))
            if epochs <= most or batch // 2 < 2:
                return batch, min(epochs, most)
            batch //= 2
