"""Bake the best candidates into the weights: SFT on each prompt's best, DPO on best-versus-worst pairs, both, or
GRPO on groups the policy samples itself, with TRL and LoRA.

pairs: what a round teaches; settings: the training settings; run: how it trains (stages, in process or data-parallel);
fast_forward: the forwards that make it cheaper; trainer: the SFT and DPO training process; grpo: online training on
groups the policy samples, rewarded by the domain's scorers, whose process is grpo_trainer. The two process modules
alone import torch and TRL at the top, so importing this package stays light.
"""

from tao_dagster.training.fast_forward import LOGIT_TRANSFORMS, VOCAB_CHUNK, add_lora_in_fp32, share_prompts, untested_trl
from tao_dagster.training.grpo import domain_reward, train_grpo
from tao_dagster.training.pairs import (
    NOT_IN_CHECKPOINT_ID,
    best_candidates,
    build_pairs,
    checkpoint_id,
    dpo_records,
    sft_records,
    sft_targets,
)
from tao_dagster.training.resume import last_saved_checkpoint
from tao_dagster.training.run import launch_data_parallel, train, train_stage
from tao_dagster.training.settings import TrainSettings

__all__ = [
    "LOGIT_TRANSFORMS",
    "NOT_IN_CHECKPOINT_ID",
    "VOCAB_CHUNK",
    "TrainSettings",
    "add_lora_in_fp32",
    "best_candidates",
    "build_pairs",
    "checkpoint_id",
    "domain_reward",
    "dpo_records",
    "last_saved_checkpoint",
    "launch_data_parallel",
    "sft_records",
    "sft_targets",
    "share_prompts",
    "train",
    "train_grpo",
    "train_stage",
    "untested_trl",
]
