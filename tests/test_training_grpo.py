"""GRPO: the domain's scorers as TRL's reward, and real TRL GRPO runs on a tiny random model that can learn a rule."""

from pathlib import Path

import pytest

from tao_dagster.rewards import build_scorers
from tao_dagster.training import TrainSettings, domain_reward, train_grpo

from .support.crash_worker import GRPO_SCORERS, GRPO_SETTINGS, grpo_prompts
from .support.models import save_tiny_llama
from .test_crash_resume import killed_training


def answers(*texts: str) -> list[list[dict]]:
    return [[{"role": "assistant", "content": text}] for text in texts]


def test_the_reward_is_the_scorers_combined_and_a_group_scorer_sees_each_prompt_group():
    """A JSON rule (weight 1) and self-consistency over the topic (weight 3): consistency counts the votes of the
    completions of the same prompt only, as GRPO's groups are, and the reward is the weighted mean."""
    scorers = build_scorers(
        [
            {"name": "json", "kind": "regex", "pattern": r"^\{"},
            {"name": "agree", "kind": "self_consistency", "field": "topic", "weight": 3.0},
        ]
    )
    card, cash = '{"topic": "card"}', '{"topic": "cash"}'
    logged = {}
    rewards = domain_reward(scorers)(
        completions=answers(card, card, cash, "no idea", cash, cash, card),
        prompt_id=["p1", "p1", "p1", "p1", "p2", "p2", "p2"],
        text=["where is my card?"] * 4 + ["can I get cash?"] * 3,
        completion_ids=[[1]] * 7,  # what TRL passes besides, which the reward does not read
        log_metric=logged.__setitem__,
    )
    # p1 votes card, card, cash (the text without a topic has no vote); p2 votes cash, cash, card.
    majority, minority = (1 + 3 * 2 / 3) / 4, (1 + 3 * 1 / 3) / 4
    expected = [majority, majority, minority, 0.0, majority, majority, minority]
    assert rewards == pytest.approx(expected)
    assert logged == pytest.approx({"scorers/json": 6 / 7, "scorers/agree": (4 * 2 / 3 + 2 / 3) / 7})


def test_prompts_with_other_fields_or_too_few_are_refused(tmp_path):
    """Only the plain prompt, its id and its text reach the trainer: a label cannot ride along to the reward."""
    prompts = grpo_prompts()
    labelled = [*prompts[:2], {**prompts[2], "label": "card"}, {**prompts[3], "prompt": []}]
    with pytest.raises(ValueError, match=r"record 2: keys \['label', 'prompt', 'prompt_id', 'text'\].*record 3: no prompt messages"):
        train_grpo("unused", labelled, None, TrainSettings(), tmp_path / "out", tmp_path / "work")
    with pytest.raises(ValueError, match=r"at least grpo_prompts_per_step \(2\) prompts, got 1"):
        train_grpo("unused", prompts[:1], None, TrainSettings(), tmp_path / "out", tmp_path / "work")


def test_a_step_samples_whole_groups_and_a_cpu_samples_with_transformers(caplog, tmp_path):
    """Any group size and prompts per step make TRL's generation batch whole groups, one generation a step; vLLM,
    asked for, samples only where there is a GPU."""
    import torch

    from tao_dagster.hardware import Precision
    from tao_dagster.training.grpo_trainer import grpo_config

    settings = TrainSettings(grpo_generations=3, grpo_prompts_per_step=5, grpo_use_vllm=True)
    config = grpo_config(settings, Precision("float32", "test"), tmp_path)
    assert (config.generation_batch_size, config.num_generations, config.steps_per_generation) == (15, 3, 1)
    assert config.gradient_checkpointing is False and config.beta == 0.0
    gpu = torch.cuda.is_available()
    assert config.use_vllm is gpu and ("grpo_use_vllm is set but there is no GPU" in caplog.text) is not gpu


@pytest.fixture(scope="module")
def learnable_model(embedded_model_dir, tmp_path_factory) -> Path:
    """A tiny random model whose weights are large enough for LoRA to make one token likely. At the usual 0.02 scale
    every logit stays within about 1.3 of the others (64-wide unit-RMS hidden states against 0.16-long embeddings),
    so no rule about the tokens can be learnt in a few steps."""
    return save_tiny_llama(embedded_model_dir, tmp_path_factory.mktemp("learnable-tiny"), initializer_range=0.5)


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model's operations are too small to share between threads, and the killed worker runs with one:
    the same thread count makes the in-process runs repeat its steps exactly."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(learnable_model, one_thread, tmp_path_factory) -> tuple[dict, Path]:
    """One uninterrupted GRPO run of GRPO_SETTINGS (12 steps): its metrics and merged model."""
    out = tmp_path_factory.mktemp("grpo") / "tuned"
    reward = domain_reward(build_scorers(GRPO_SCORERS))
    return train_grpo(str(learnable_model), grpo_prompts(), reward, GRPO_SETTINGS, out, out.with_name("work")), out


@pytest.mark.slow
def test_grpo_trains_saves_a_merged_model_and_logs_its_metrics(trained, learnable_model):
    metrics, out = trained
    assert metrics["steps"] == 12 and metrics["resumed_from_step"] == 0 and metrics["prompts"] == 4
    assert (metrics["batch_size"], metrics["epochs"]) == (8, 6.0)  # 2 prompts x 4 completions a step; 12 x 2 / 4 prompts
    assert len(metrics["loss_curve"]) == len(metrics["reward_curve"]) == 12
    assert all(0.0 <= r <= 1.0 for r in metrics["reward_curve"])
    assert metrics["first_reward"] == metrics["reward_curve"][0] and metrics["final_reward"] == metrics["reward_curve"][-1]
    assert metrics["train_tokens"] > 12 * 8 * 8 and metrics["tokens_per_second"] > 0  # prompts and 8-token completions
    assert metrics["precision"] in ("bfloat16", "float32") and 0.0 <= metrics["zero_std_fraction"] <= 1.0
    assert_merged_and_changed(out, learnable_model)


def sampled_reward(model_dir: Path, samples: int = 16) -> float:
    """The mean reward of `samples` completions to each GRPO prompt sampled from the model as GRPO samples them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reward, settings = domain_reward(build_scorers(GRPO_SCORERS)), GRPO_SETTINGS
    torch.manual_seed(1)
    rewards = []
    for record in grpo_prompts():
        inputs = tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(
            **inputs,
            do_sample=True,
            temperature=settings.grpo_temperature,
            top_k=0,
            max_new_tokens=settings.grpo_max_completion_length,
            num_return_sequences=samples,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        rewards += reward(answers(*texts), [record["prompt_id"]] * samples, [record["text"]] * samples)
    return sum(rewards) / len(rewards)


@pytest.mark.slow
def test_grpo_moves_the_policy_toward_higher_reward(trained, learnable_model):
    """Completions sampled from the tuned model open with a vowel far more often than the parent's."""
    before, after = sampled_reward(learnable_model), sampled_reward(trained[1])
    print(f"\nsampled reward: parent {before:.3f}, after 12 GRPO steps {after:.3f}")
    assert after > before + 0.3


@pytest.mark.slow
def test_a_killed_grpo_run_resumes_from_its_last_checkpoint(trained, learnable_model, tmp_path):
    """Killed after a checkpoint, the run resumes from it and continues the uninterrupted run's curves: the same
    adapter, optimiser, sampling state and prompt order."""
    work, out = tmp_path / "work", tmp_path / "tuned"
    killed_at = killed_training(tmp_path, "train_grpo", learnable_model, out, work, steps=12)
    reward = domain_reward(build_scorers(GRPO_SCORERS))
    resumed = train_grpo(str(learnable_model), grpo_prompts(), reward, GRPO_SETTINGS, out, work)
    print(f"\nGRPO: killed after step {killed_at}'s checkpoint; resumed from step {resumed['resumed_from_step']} to {resumed['steps']}")
    assert resumed["resumed_from_step"] == killed_at and resumed["steps"] == 12
    assert (out / "config.json").is_file()
    uninterrupted = trained[0]
    assert resumed["reward_curve"] == pytest.approx(uninterrupted["reward_curve"])
    assert resumed["loss_curve"] == pytest.approx(uninterrupted["loss_curve"], abs=1e-6)


@pytest.mark.e2e
def test_grpo_on_the_embedded_model_with_the_banking_scorers(embedded_model_dir, tmp_path):
    """Two steps on plain banking prompts with the demo's own scorers (format, embedding ones, self-consistency over
    each group): every scorer is logged per step and the merged model is saved in the machine's precision."""
    import json

    from tao_dagster.domain import load_domain

    from .conftest import BANKING

    spec = load_domain(BANKING / "domain.yaml")
    queries = (BANKING / "logs" / "2026-11-02.csv").read_text().splitlines()[1:5]
    prompts = [{"prompt": spec.messages([{"role": "user", "content": q}]), "prompt_id": f"q{i}", "text": q} for i, q in enumerate(queries)]
    scorers = spec.build_scorers()
    settings = TrainSettings(grpo_steps=2)
    metrics = train_grpo(str(embedded_model_dir), prompts, domain_reward(scorers), settings, tmp_path / "out", tmp_path / "work")
    print(f"\nbanking GRPO: rewards {metrics['reward_curve']}, {metrics['train_seconds']:.0f} s, {metrics['scorer_curves']}")
    assert metrics["steps"] == 2 and all(0.0 <= r <= 1.0 for r in metrics["reward_curve"])
    assert set(metrics["scorer_curves"]) == {s.name for s in scorers} and all(len(c) == 2 for c in metrics["scorer_curves"].values())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == metrics["precision"]


def assert_merged_and_changed(out, parent_dir) -> None:
    """A standalone model (no LoRA weights left) with its tokenizer, whose weights differ from the parent's (that they
    moved toward higher reward is test_grpo_moves_the_policy_toward_higher_reward's point)."""
    import torch
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(out).state_dict()
    parent = AutoModelForCausalLM.from_pretrained(parent_dir).state_dict()
    assert not any("lora" in name for name in tuned)
    assert any(not torch.equal(p.to(torch.float32), parent[n].to(torch.float32)) for n, p in tuned.items()), "no weight changed"
    assert (out / "tokenizer.json").is_file()
