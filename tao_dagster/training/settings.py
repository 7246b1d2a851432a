"""The DPO settings, one place for their defaults and meaning: the Dagster launchpad shows the same help."""

from pydantic import BaseModel, Field


class TrainSettings(BaseModel):
    """DPO with LoRA. The defaults fit one round on a 2-core CPU in a few minutes."""

    beta: float = Field(0.1, description="DPO temperature: higher stays closer to the reference.")
    sft_weight: float = Field(1.0, description="Weight of an NLL term on the chosen answer (RPO); 0 for pure DPO.")
    learning_rate: float = Field(2e-4, description="AdamW learning rate of the LoRA weights.")
    epochs: float = Field(1.0, description="Passes over the pairs.")
    batch_size: int = Field(8, description="Pairs per optimiser step.")
    lora_r: int = Field(16, description="LoRA rank, on all linear layers.")
    lora_alpha: int = Field(32, description="LoRA scaling numerator.")
    max_length: int = Field(384, description="Longest prompt+answer in tokens; TRL truncates longer ones.")
    min_margin: float = Field(0.1, description="Smallest reward gap between chosen and rejected.")
    min_chosen_reward: float = Field(0.5, description="A pair's chosen answer must reach this reward.")
    max_pairs: int = Field(
        160, description="Cap on pairs (0: all), keeping the widest reward margins; 160 sizes a round for a 2-core CPU (about 6 min)."
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
    seed: int = 0
