"""Bake the best candidates into the weights: best-versus-worst pairs per prompt and TRL DPO with LoRA.

Pairs are built with the *plain* prompt, never the exploration scaffolding that produced the
candidates, so the tuned model learns to answer well without it and serves at the base model's cost.
"""

import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import polars as pl
from pydantic import BaseModel, Field

from tao_dagster.hardware import Precision, compute_precision

log = logging.getLogger(__name__)


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


# How often to save, and how activations are computed, do not change the trained weights (beyond rounding),
# so they are no part of a checkpoint's identity.
NOT_IN_CHECKPOINT_ID = {"save_steps", "share_prompts", "gradient_checkpointing"}


def build_pairs(candidates: pl.DataFrame, settings: TrainSettings) -> pl.DataFrame:
    """One (chosen, rejected) pair per prompt: its best and worst candidate by combined reward.

    `candidates` needs prompt_id, candidate_id, response, reward. Ties go to the shorter answer for
    chosen (cheaper to serve) and the longer one for rejected.
    """
    ranked = candidates.with_columns(pl.col("response").str.len_chars().alias("chars"))
    best = (
        ranked.sort(["reward", "chars", "candidate_id"], descending=[True, False, False]).group_by("prompt_id", maintain_order=True).first()
    )
    worst = (
        ranked.sort(["reward", "chars", "candidate_id"], descending=[False, True, False]).group_by("prompt_id", maintain_order=True).first()
    )
    pairs = best.select(
        "prompt_id",
        pl.col("candidate_id").alias("chosen_id"),
        pl.col("response").alias("chosen"),
        pl.col("reward").alias("chosen_reward"),
    ).join(
        worst.select(
            "prompt_id",
            pl.col("candidate_id").alias("rejected_id"),
            pl.col("response").alias("rejected"),
            pl.col("reward").alias("rejected_reward"),
        ),
        on="prompt_id",
    )
    margin = pl.col("chosen_reward") - pl.col("rejected_reward")
    pairs = pairs.filter((margin >= settings.min_margin) & (pl.col("chosen_reward") >= settings.min_chosen_reward))
    if settings.max_pairs:
        pairs = pairs.sort([margin, pl.col("prompt_id")], descending=[True, False]).head(settings.max_pairs)
    return pairs.sort("prompt_id")


def checkpoint_id(parent: str, settings: TrainSettings, pairs: pl.DataFrame) -> tuple[str, str]:
    """(checkpoint id, data hash): the same parent, config and pairs give the same checkpoint."""
    data = "\n".join(f"{a}:{b}:{c}" for a, b, c in pairs.select("prompt_id", "chosen_id", "rejected_id").iter_rows())
    data_hash = hashlib.sha256(data.encode()).hexdigest()[:16]
    config = settings.model_dump(exclude=NOT_IN_CHECKPOINT_ID)
    spec = json.dumps({"parent": parent, "algorithm": "dpo-lora", "config": config, "data": data_hash}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12], data_hash


def last_saved_checkpoint(work_dir: Path) -> Path | None:
    """The newest Trainer checkpoint written to the end: the Trainer writes trainer_state.json last, so a
    checkpoint cut short by a kill has none and is passed over."""
    saved = [path for path in work_dir.glob("checkpoint-*") if (path / "trainer_state.json").is_file()]
    return max(saved, key=lambda path: int(path.name.removeprefix("checkpoint-")), default=None)


# Logit multipliers some model families apply before the softmax; share_prompts leaves those to TRL's own path.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
VOCAB_CHUNK = 32768  # vocabulary columns per LM-head tile, as TRL's fused head


def share_prompts(model) -> None:
    """Make TRL's fused log-prob forward (`model(..., labels=..., fused_lm_head=True)`) run each pair's prompt once.

    DPO scores a pair as prompt+chosen and prompt+rejected, so TRL runs every prompt twice, and on a CPU its
    LM head scores every position, prompt and padding included, against the whole 49k-token vocabulary. Here
    the opening that all the batch's prompts share (the chat template and the domain's instruction) runs once
    for the batch, the rest of each prompt once for its pair, their key/value cache is shared by both answers
    of each pair, and only answer tokens go through TRL's chunked LM-head kernel. The log-probs, and so the loss and its gradient,
    are the same; only work that TRL discards is skipped. Batches whose pairs do not start with one shared
    prompt, models under gradient checkpointing (which allows no cache) and models that transform their
    logits take TRL's own path. Call after DPOTrainer has added its fused head.
    """
    import types

    import torch
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import FusedCausalLMOutput

    if getattr(model, "shares_prompts", False):
        return
    trl_forward = model.forward
    text_config = model.config.get_text_config()
    plain_logits = all(getattr(text_config, name, None) in (None, 1.0) for name in LOGIT_TRANSFORMS)

    def shared(ids, starts, pairs: int) -> bool:
        """Whether both rows of each pair (chosen i, rejected i + pairs) start with the same prompt."""
        return bool(pairs) and all(
            starts[i] == starts[i + pairs] and torch.equal(ids[i, : starts[i]], ids[i + pairs, : starts[i]]) for i in range(pairs)
        )

    def forward(self, *args, fused_lm_head=False, labels=None, input_ids=None, attention_mask=None, **kwargs):
        usable = fused_lm_head and plain_logits and labels is not None and input_ids is not None and not args
        usable = usable and len(input_ids) % 2 == 0 and not self.base_model.gradient_checkpointing
        if usable:
            pairs = len(input_ids) // 2
            scored = labels != -100
            starts = scored.int().argmax(dim=1)  # first answer token = prompt length
            usable = shared(input_ids, starts, pairs)
        if not usable:
            kwargs.update(fused_lm_head=fused_lm_head, labels=labels, input_ids=input_ids, attention_mask=attention_mask)
            return trl_forward(*args, **kwargs)
        width, device = input_ids.shape[1], input_ids.device
        ends = attention_mask.sum(dim=1) if attention_mask is not None else torch.full_like(starts, width)
        prompt_lengths = starts[:pairs]
        longest_prompt = int(prompt_lengths.max())
        # The opening all prompts share (chat template and task instruction, most of each prompt) runs once for
        # the batch; each prompt's own rest runs once per pair, from the chosen rows. Each keeps at least one token
        # of its own, whose hidden state predicts its first answer token. Past a shorter prompt come its answer
        # tokens: causal attention keeps them out of the prompt, and the mask below keeps them out of the answers.
        rows = input_ids[:pairs, :longest_prompt]
        same = (rows == rows[:1]).all(dim=0).int()
        common = min(int(same.cumprod(dim=0).sum()), int(prompt_lengths.min()) - 1) if pairs > 1 else 0
        cache = None
        if common:
            cache = self.base_model(input_ids=rows[:1, :common], use_cache=True).past_key_values
            cache.batch_repeat_interleave(pairs)
        rest_positions = torch.arange(common, longest_prompt, device=device).expand(pairs, -1)
        prompts = self.base_model(input_ids=rows[:, common:], position_ids=rest_positions, past_key_values=cache, use_cache=True)
        cache = prompts.past_key_values
        cache.batch_repeat_interleave(2)  # rows: pair 0 twice, pair 1 twice, ...
        chosen_rows = torch.arange(pairs, device=device)
        order = torch.stack([chosen_rows, chosen_rows + pairs], dim=1).flatten()  # chosen 0, rejected 0, chosen 1, ...
        steps = torch.arange(int((ends[order] - starts[order]).max()), device=device)
        positions = starts[order, None] + steps  # each answer token's position in its row
        inside = positions.clamp(max=width - 1)
        prompt_mask = torch.arange(longest_prompt, device=device) < prompt_lengths[:, None]
        mask = torch.cat([prompt_mask.repeat_interleave(2, dim=0), torch.ones_like(positions, dtype=torch.bool)], dim=1)
        # Right padding comes after each answer's last token, so causal attention keeps it out of the answers.
        answer_ids = input_ids[order[:, None], inside]
        answers = self.base_model(input_ids=answer_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        # Hidden state j predicts answer token j: a prompt's last one predicts the first answer token.
        last_prompt = prompts.last_hidden_state[chosen_rows, prompt_lengths - 1 - common].repeat_interleave(2, dim=0)
        hidden = torch.cat([last_prompt[:, None], answers.last_hidden_state[:, :-1]], dim=1)
        counted = scored[order[:, None], inside] & (positions < ends[order, None])
        head = self.get_output_embeddings()
        # The head runs in fp32 even under bf16 autocast: early in training the LoRA weights move the final hidden
        # state by less than bf16's resolution, and a bf16 head would round that progress away.
        with torch.autocast(device.type, enabled=False):
            per_token = ChunkedLogProbFunction.apply(
                hidden[counted].float(), head.weight.float(), head.bias, answer_ids[counted], 1.0, VOCAB_CHUNK,
                None, 1.0, ("log_probs", "entropy", "mean_logits", "is_top1"),
            )  # fmt: skip
        index = (order[:, None].expand_as(positions)[counted], positions[counted] - 1)  # TRL's log_probs[:, t] is token t + 1's
        log_probs, entropy, _, mean_logits, is_top1 = (
            None if x is None else x.new_zeros(input_ids.shape[0], width - 1).index_put(index, x) for x in per_token
        )
        return FusedCausalLMOutput(
            loss=-per_token[0].sum() / max(len(per_token[0]), 1),
            log_probs=log_probs,
            entropy=entropy,
            mean_logits=mean_logits,
            is_top1=is_top1,
            label_mask=scored[:, 1:],
        )

    model.forward = types.MethodType(forward, model)
    model.shares_prompts = True


def add_lora_in_fp32(model) -> None:
    """Keep each LoRA layer's output, base product plus adapter update, in fp32 under bf16 autocast.

    PEFT adds the update to the base layer's bf16 output, and early in training the update is smaller than
    bf16's resolution there: it is rounded away, and the loss falls far more slowly than in fp32 (2.36
    against 2.06 after six steps of bench/training.py). Summed in fp32, the curve follows fp32's, while the
    matrix products stay in bf16. The frozen base path gets the same upcast, so the reference pass (adapters
    off) and the first policy pass agree. Merged layers and LoRA variants keep PEFT's forward.
    """
    import types

    from peft.tuners.lora import Linear

    def forward(self, x, *args, **kwargs):
        if self.merged or self.lora_variant or "adapter_names" in kwargs:
            return Linear.forward(self, x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs).float()
        if not self.disable_adapters:
            for name in self.active_adapters:
                if name in self.lora_A:
                    result = result + self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))) * self.scaling[name]
        return result

    for module in model.modules():
        if isinstance(module, Linear):
            module.forward = types.MethodType(forward, module)


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
    from datasets import Dataset

    precision = precision or compute_precision()
    if processes > 1:
        return launch_data_parallel(model_path, Dataset.from_list(pairs), settings, out_dir, work_dir, processes, precision)
    return _train(model_path, Dataset.from_list(pairs), settings, out_dir, work_dir, precision)


def launch_data_parallel(
    model_path: str, pairs, settings: TrainSettings, out_dir: Path, work_dir: Path, processes: int, precision: Precision
) -> dict:
    """Run `_train` in `processes` processes under `accelerate launch` (torch.distributed: NCCL on GPUs, gloo
    on CPUs) and return the metrics its first process writes. The pairs are saved to disk first, so the
    tokenized copy the first process caches beside them is there for the others (an in-memory dataset's
    temporary cache is not)."""
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
    subprocess.run([*launch, "-m", "tao_dagster.training", str(job)], check=True)
    return json.loads((work_dir / "metrics.json").read_text())


def _train(model_path: str, pairs, settings: TrainSettings, out_dir: Path, work_dir: Path, precision: Precision) -> dict | None:
    """One training process; in a data-parallel launch only the first process saves and returns the metrics."""
    import time

    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # On a GPU, bf16 weights halve the memory (PEFT keeps the adapters in fp32); a CPU keeps fp32 weights under
    # bf16 autocast.
    gpu_bf16 = precision.bf16 and torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if gpu_bf16 else torch.float32)
    config = DPOConfig(
        output_dir=str(work_dir),
        beta=settings.beta,
        loss_type=["sigmoid", "sft"] if settings.sft_weight else ["sigmoid"],
        loss_weights=[1.0, settings.sft_weight] if settings.sft_weight else None,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size // int(os.environ.get("WORLD_SIZE", "1")),
        max_length=settings.max_length,
        precompute_ref_log_probs=settings.precompute_ref_log_probs,
        bf16=precision.bf16,
        gradient_checkpointing=settings.gradient_checkpointing,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        report_to="none",
        seed=settings.seed,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA trains every adapter it adds
        use_cpu=not torch.cuda.is_available(),
    )
    lora = LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )

    def adapt(peft_model) -> None:
        if settings.share_prompts:
            share_prompts(peft_model.get_base_model())
        if precision.bf16 and not gpu_bf16:
            add_lora_in_fp32(peft_model)

    class Trainer(DPOTrainer):
        def _precompute_ref_logps(self, *args, **kwargs):
            adapt(self.model)  # before the reference pass, which DPOTrainer runs from __init__
            return super()._precompute_ref_logps(*args, **kwargs)

    start = time.perf_counter()  # the reference pass is part of training's cost
    trainer = Trainer(model=model, args=config, train_dataset=pairs, processing_class=tokenizer, peft_config=lora)
    adapt(trainer.model)
    resume = last_saved_checkpoint(work_dir)
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    if not trainer.accelerator.is_main_process:
        return None
    history = [h for h in trainer.state.log_history if "loss" in h]
    merged = trainer.model.merge_and_unload()
    merged = merged.to(precision.torch_dtype())
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    last = history[-1] if history else {}
    data = trainer.train_dataset
    lengths = zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"])
    tokens = settings.epochs * sum(2 * len(prompt) + len(chosen) + len(rejected) for prompt, chosen, rejected in lengths)
    loss_curve = [float(h["loss"]) for h in history]  # every step, those before a resume included
    return {
        "train_loss": sum(loss_curve) / len(loss_curve) if loss_curve else float("nan"),
        "final_loss": float(last.get("loss", float("nan"))),
        "final_reward_accuracy": float(last.get("rewards/accuracies", float("nan"))),
        "final_reward_margin": float(last.get("rewards/margins", float("nan"))),
        "steps": int(trainer.state.global_step),
        "resumed_from_step": int(resume.name.removeprefix("checkpoint-")) if resume else 0,
        "pairs": len(pairs),
        "train_seconds": seconds,  # the reference pass included
        "train_tokens": int(tokens),  # prompt+chosen and prompt+rejected, times the epochs
        "tokens_per_second": tokens / seconds,
        "loss_curve": loss_curve,
        "precision": precision.dtype,
    }


def main(job_file: str) -> None:
    """Entry point of each process of a data-parallel launch (see launch_data_parallel)."""
    from datasets import load_from_disk

    work_dir = Path(job_file).parent
    job = json.loads(Path(job_file).read_text())
    settings, precision = TrainSettings(**job["settings"]), Precision(**job["precision"])
    metrics = _train(job["model_path"], load_from_disk(work_dir / "pairs"), settings, Path(job["out_dir"]), work_dir, precision)
    if metrics is not None:
        (work_dir / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(sys.argv[1])
