"""The optimisation step as a setting: SFT on each prompt's best candidate, DPO, and SFT then DPO from it, with real
TRL on the tiny random model."""

import json

import polars as pl
import pytest

from tao_dagster.training import TrainSettings, build_pairs, checkpoint_id, sft_records, sft_targets, train

PROMPT = [{"role": "user", "content": "Classify: where is my card?"}]
TARGET = '{"topic": "card"}'


def candidates(rows):
    return pl.DataFrame(rows, schema=["prompt_id", "candidate_id", "response", "reward"], orient="row")


def test_sft_targets_are_each_prompt_clear_best():
    frame = candidates(
        [("p1", "a", "good", 0.9), ("p1", "b", "bad", 0.1), ("p1", "c", "middle", 0.5)]
        + [("p2", "d", "same", 0.4), ("p2", "e", "same", 0.4)]  # nothing stands out: no target
        + [("p3", "f", "weak", 0.3), ("p3", "g", "weaker", 0.0)]
    )
    targets = sft_targets(frame, TrainSettings())
    assert targets.select("prompt_id", "candidate_id").rows() == [("p1", "a"), ("p3", "f")]
    assert sft_targets(frame, TrainSettings(min_chosen_reward=0.5))["candidate_id"].to_list() == ["a"]
    plain = {"p1": (PROMPT, None), "p3": (PROMPT, None)}
    assert sft_records(targets, plain)[0] == {"prompt": PROMPT, "completion": [{"role": "assistant", "content": "good"}]}


def test_the_algorithm_and_its_data_are_part_of_the_checkpoint_id():
    frame = candidates([("p1", "a", "good", 0.9), ("p1", "b", "bad", 0.1), ("p2", "c", "good", 0.9), ("p2", "d", "bad", 0.0)])
    pairs, targets = build_pairs(frame, TrainSettings()), sft_targets(frame, TrainSettings())
    ids = {algo: checkpoint_id("base:m", TrainSettings(algorithm=algo), pairs, targets)[0] for algo in ("sft", "dpo", "sft+dpo")}
    assert len(set(ids.values())) == 3
    assert (
        checkpoint_id("base:m", TrainSettings(), pairs, targets)[1] != checkpoint_id("base:m", TrainSettings(), pairs, targets.head(1))[1]
    )
    with pytest.raises(ValueError):
        TrainSettings(algorithm="ppo")


def answer_log_prob(model_dir, answer: str) -> float:
    """Summed log-prob of `answer` as the assistant's reply to PROMPT."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        log_probs = model(ids).logits[0, :-1].log_softmax(-1)
    positions = range(len(prompt_ids) - 1, ids.shape[1] - 1)
    return float(sum(log_probs[pos, ids[0, pos + 1]] for pos in positions))


RECORDS = {
    "sft": [{"prompt": PROMPT, "completion": [{"role": "assistant", "content": TARGET}]}] * 4,
    "dpo": [
        {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": TARGET}], "rejected": [{"role": "assistant", "content": "no idea"}]}
    ]
    * 4,
}


def test_sft_moves_the_model_toward_its_targets(tiny_model_dir, tmp_path):
    settings = TrainSettings(algorithm="sft", batch_size=2, learning_rate=1e-2, min_steps=0, sft_epochs=2)
    metrics = train(str(tiny_model_dir), RECORDS, settings, tmp_path / "ckpt", tmp_path / "work")
    assert (metrics["steps"], metrics["targets"], metrics["pairs"]) == (4, 4, 0) and len(metrics["loss_curve"]) == 4
    assert list(metrics["stages"]) == ["sft"] and metrics["train_tokens"] > 0
    gain = answer_log_prob(tmp_path / "ckpt", TARGET) - answer_log_prob(tiny_model_dir, TARGET)
    assert gain > 1.0, f"the target's log-prob rose by only {gain:.2f}"


def test_sft_then_dpo_is_one_checkpoint_and_a_rerun_keeps_the_warm_start(tiny_model_dir, tmp_path):
    """sft+dpo trains SFT, then DPO from the merged SFT model; a run killed after SFT (its merged model and
    metrics kept in the work folder) goes straight to DPO."""
    settings = TrainSettings(algorithm="sft+dpo", batch_size=2, learning_rate=1e-2, min_steps=0, sft_epochs=1)
    metrics = train(str(tiny_model_dir), RECORDS, settings, tmp_path / "ckpt", tmp_path / "work")
    assert list(metrics["stages"]) == ["sft", "dpo"] and metrics["steps"] == 4
    assert (metrics["targets"], metrics["pairs"]) == (4, 4) and len(metrics["loss_curve"]) == 4
    assert metrics["train_seconds"] == pytest.approx(sum(m["train_seconds"] for m in metrics["stages"].values()))
    assert answer_log_prob(tmp_path / "ckpt", TARGET) > answer_log_prob(tiny_model_dir, TARGET)
    warm = json.loads((tmp_path / "work" / "sft-metrics.json").read_text())
    again = train(str(tiny_model_dir), RECORDS, settings, tmp_path / "ckpt-again", tmp_path / "work")
    assert again["stages"]["sft"]["train_seconds"] == warm["train_seconds"], "the SFT stage was trained again"


def test_a_time_budget_stops_each_stage_after_the_step_that_spends_it(tiny_model_dir, tmp_path):
    """sft+dpo scheduled for 4 SFT and 2 DPO steps, with a budget the first step of each spends: one step each, and
    the tokens counted are those of the steps taken."""
    settings = TrainSettings(algorithm="sft+dpo", batch_size=2, min_steps=0, sft_epochs=2, max_train_seconds=1e-3)
    metrics = train(str(tiny_model_dir), RECORDS, settings, tmp_path / "ckpt", tmp_path / "work")
    assert {stage: m["steps"] for stage, m in metrics["stages"].items()} == {"sft": 1, "dpo": 1}
    unlimited = train(
        str(tiny_model_dir), RECORDS, settings.model_copy(update={"max_train_seconds": 0}), tmp_path / "ckpt2", tmp_path / "work2"
    )
    assert {stage: m["steps"] for stage, m in unlimited["stages"].items()} == {"sft": 4, "dpo": 2}
    assert metrics["stages"]["sft"]["train_tokens"] == unlimited["stages"]["sft"]["train_tokens"] // 4


@pytest.mark.parametrize(("algorithm", "missing"), [("sft", "targets"), ("dpo", "pairs"), ("sft+dpo", "pairs or targets")])
def test_a_round_with_nothing_to_learn_names_what_its_algorithm_lacks(monkeypatch, algorithm, missing):
    """Candidates that all score the same have no clear best: no SFT target and no pair."""
    from types import SimpleNamespace

    from tao_dagster.errors import StageError
    from tao_dagster.pipeline import tuning

    tied = pl.DataFrame(
        {"prompt_id": ["a", "a"], "candidate_id": ["1", "2"], "response": ["x", "y"], "reward": [0.5, 0.5]}
        | {"strategy": ["plain", "plain"], "policy_version": ["base:m", "base:m"]}
    )
    monkeypatch.setattr(tuning, "candidate_rewards", lambda db, scorers: tied)
    spec, parent = SimpleNamespace(build_scorers=list), SimpleNamespace(version="base:m")
    with pytest.raises(StageError, match=f"^no training {missing} among 1 prompts"):
        tuning.training_data(None, spec, parent, TrainSettings(algorithm=algorithm))
