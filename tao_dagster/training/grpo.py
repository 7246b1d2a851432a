"""GRPO, online: the policy samples a group of answers to each training prompt, the domain's scorers reward them,
and each answer is pushed up or down by how it compares with its group.

Light to import: torch and TRL load with the training process, tao_dagster.training.grpo_trainer.
"""

from pathlib import Path

import polars as pl

from tao_dagster.hardware import Precision, compute_precision
from tao_dagster.rewards import Scored, Scorer, combine, score_frame
from tao_dagster.training.settings import TrainSettings

# What a training prompt carries: the plain messages the policy answers, and the id and text the scorers read.
RECORD_KEYS = frozenset({"prompt", "prompt_id", "text"})


def domain_reward(scorers: list[Scorer]):
    """TRL's GRPO reward function made of the domain's scorers: each completion's combined reward in [0, 1].

    TRL calls it with the batch's completions and, as keyword arguments, the dataset's other columns: `prompt_id` and
    `text`, the prompt as reward_scores gives it to the scorers. Pointwise scorers score each completion; a group
    scorer (self-consistency) compares the completions that share a prompt_id, which in a GRPO batch are that prompt's
    group. Nothing else reaches a scorer. Each scorer's mean goes to TRL's log (`scorers/<name>`) where TRL passes
    `log_metric`.
    """

    def reward(completions, prompt_id, text, log_metric=None, **_) -> list[float]:
        items = [Scored(pid, prompt, completion[-1]["content"]) for pid, prompt, completion in zip(prompt_id, text, completions)]
        ids = [str(i) for i in range(len(items))]
        scores = score_frame(items, ids, scorers)
        if log_metric:
            for name, mean in scores.group_by("scorer").agg(pl.col("score").mean()).iter_rows():
                log_metric(f"scorers/{name}", mean)
        combined = combine(scores, scorers)
        by_id = dict(zip(combined["candidate_id"], combined["reward"]))
        return [by_id[i] for i in ids]

    reward.__name__ = "domain_reward"  # TRL logs its mean as rewards/domain_reward/mean
    return reward


def train_grpo(
    model_path: str,
    prompts: list[dict],
    reward,
    settings: TrainSettings,
    out_dir: Path,
    work_dir: Path,
    precision: Precision | None = None,
) -> dict:
    """Train LoRA adapters with GRPO from `model_path`, merge them and save a standalone model to `out_dir`.

    `prompts` are records {"prompt": [messages], "prompt_id": str, "text": str}: the plain prompt as served, and its
    id and text for `reward` (see domain_reward); any other key (a label, say) is refused, so nothing else can reach
    the reward. Trainer checkpoints go to `work_dir` every `save_steps`, and a run that finds one there (a killed run
    of the same checkpoint id) resumes from it. Returns the metrics of all steps, those before a resume included.
    `precision` defaults to this machine's; the merged model is saved in it.
    """
    check_records(prompts, settings)
    from datasets import Dataset

    from tao_dagster.training.grpo_trainer import grpo_process

    return grpo_process(model_path, Dataset.from_list(prompts), reward, settings, out_dir, work_dir, precision or compute_precision())


def check_records(prompts: list[dict], settings: TrainSettings) -> None:
    """Refuse records of another shape, naming each, and sets too small for one step's prompts."""
    wrong = [f"record {i}: {problem}" for i, record in enumerate(prompts) if (problem := record_problem(record))]
    if wrong:
        raise ValueError("GRPO prompts: " + "; ".join(wrong[:5]) + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else ""))
    if len(prompts) < settings.grpo_prompts_per_step:
        raise ValueError(f"GRPO needs at least grpo_prompts_per_step ({settings.grpo_prompts_per_step}) prompts, got {len(prompts)}")


def record_problem(record: dict) -> str | None:
    if record.keys() != RECORD_KEYS:
        return f"keys {sorted(record)}, expected {sorted(RECORD_KEYS)}"
    if not record["prompt"]:
        return "no prompt messages"
    return None
