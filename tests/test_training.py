import json

import polars as pl
import pytest

from tao_dagster.training import TrainSettings, build_pairs, checkpoint_id, dpo_records, share_prompts, train_stage


def candidates(rows):
    return pl.DataFrame(rows, schema=["prompt_id", "candidate_id", "response", "reward"], orient="row")


def test_pairs_are_best_versus_worst_per_prompt():
    frame = candidates(
        [
            ("p1", "a", "good", 0.9),
            ("p1", "b", "bad", 0.1),
            ("p1", "c", "middle", 0.5),
            ("p2", "d", "fine", 0.8),
            ("p2", "e", "also fine", 0.75),  # margin too small
            ("p3", "f", "weak", 0.3),
            ("p3", "g", "weaker", 0.0),  # chosen too weak
        ]
    )
    one = {"pairs_per_prompt": 1}  # the pair the default's second pair per prompt would add to p1 is not this test's point
    pairs = build_pairs(frame, TrainSettings(min_margin=0.1, min_chosen_reward=0.5, **one))
    assert pairs.select("prompt_id", "chosen_id", "rejected_id").rows() == [("p1", "a", "b")]
    assert build_pairs(frame, TrainSettings(min_margin=0.0, min_chosen_reward=0.0, **one)).height == 3


def test_ties_prefer_the_shorter_chosen_answer():
    frame = candidates([("p1", "a", "long long answer", 1.0), ("p1", "b", "short", 1.0), ("p1", "c", "x", 0.0)])
    pairs = build_pairs(frame, TrainSettings())
    assert pairs["chosen_id"].to_list() == ["b"]


def test_checkpoint_id_depends_on_parent_settings_and_data():
    frame = candidates([("p1", "a", "good", 0.9), ("p1", "b", "bad", 0.1), ("p2", "c", "good", 0.9), ("p2", "d", "bad", 0.0)])
    pairs = build_pairs(frame, TrainSettings())
    base = checkpoint_id("base:m", TrainSettings(), pairs)
    assert base == checkpoint_id("base:m", TrainSettings(), pairs)
    assert base == checkpoint_id("base:m", TrainSettings(save_steps=1), pairs), "how often to save does not change the weights"
    assert base[0] != checkpoint_id("base:other", TrainSettings(), pairs)[0]
    assert base[0] != checkpoint_id("base:m", TrainSettings(beta=0.2), pairs)[0]
    assert base[1] != checkpoint_id("base:m", TrainSettings(), pairs.head(1))[1]


def test_dpo_records_pair_the_plain_prompt_with_both_answers():
    frame = candidates([("p1", "a", "good", 0.9), ("p1", "b", "bad", 0.1), ("p2", "c", "fine", 0.8), ("p2", "d", "poor", 0.0)])
    one, two = [{"role": "user", "content": "one"}], [{"role": "user", "content": "two"}]
    pairs = build_pairs(frame, TrainSettings())
    records = dpo_records(pairs, {"p1": (one, None), "p2": (two, None)})
    assistant = [[{"role": "assistant", "content": text}] for text in ("good", "bad", "fine", "poor")]
    assert records == [
        {"prompt": one, "chosen": assistant[0], "rejected": assistant[1]},
        {"prompt": two, "chosen": assistant[2], "rejected": assistant[3]},
    ]
    # Tools production offered go with their prompt, as TRL's `tools` field (JSON text); every record has the field.
    tools = [{"type": "function", "function": {"name": "card_status", "parameters": {"type": "object"}}}]
    with_tools = dpo_records(pairs, {"p1": (one, tools), "p2": (two, None)})
    assert [r["tools"] for r in with_tools] == [json.dumps(tools), None]


def card_pairs(n: int) -> list[dict]:
    prompt = [{"role": "user", "content": "Classify: where is my card?"}]
    chosen, rejected = [{"role": "assistant", "content": '{"topic": "card"}'}], [{"role": "assistant", "content": "no idea"}]
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}] * n


def test_dpo_trains_and_saves_a_merged_model(tiny_model_dir, tmp_path):
    """Real TRL DPO + LoRA on a tiny random model: the merged model loads and prefers the chosen answer more than its parent."""
    out = tmp_path / "ckpt"
    settings = TrainSettings(batch_size=2, learning_rate=1e-2, min_steps=0)  # the schedule as given: 4 pairs, 2 a step
    metrics = train_stage("dpo", str(tiny_model_dir), card_pairs(4), settings, out, tmp_path / "work")
    assert metrics["steps"] == 2 and metrics["examples"] == 4
    assert len(metrics["loss_curve"]) == 2
    assert_merged_and_moved_to_the_chosen(out, tiny_model_dir)


@pytest.mark.slow
def test_data_parallel_training_under_accelerate(tiny_model_dir, tmp_path):
    """Two processes under `accelerate launch` (gloo on this CPU; NCCL on GPUs): the batch is split between
    them, so 8 pairs in batches of 4 still take 2 optimiser steps, and one merged model is saved."""
    out = tmp_path / "ckpt"
    settings = TrainSettings(batch_size=4, learning_rate=1e-2, min_steps=0)  # the schedule as given
    metrics = train_stage("dpo", str(tiny_model_dir), card_pairs(8), settings, out, tmp_path / "work", processes=2)
    assert metrics["steps"] == 2 and metrics["examples"] == 8 and len(metrics["loss_curve"]) == 2
    assert_merged_and_moved_to_the_chosen(out, tiny_model_dir)
    with pytest.raises(ValueError, match="batch_size 4 must be a multiple of the 3 training processes"):
        train_stage("dpo", str(tiny_model_dir), card_pairs(8), settings, out, tmp_path / "work", processes=3)


def answer_log_prob(model, tokenizer, prompt: list[dict], answer: list[dict]) -> float:
    """log p(answer | prompt) under the model: the answer's tokens in the chat template, after the prompt's."""
    import torch

    from tao_dagster.generation import chat_token_ids

    start = len(chat_token_ids(tokenizer, prompt))
    ids = torch.tensor([chat_token_ids(tokenizer, prompt + answer, generation_prompt=False)])
    with torch.inference_mode():
        log_probs = model(ids).logits.float().log_softmax(-1)[0, start - 1 : -1]
    return float(log_probs.gather(1, ids[0, start:, None]).sum())


def chosen_margin(model_dir, pair: dict) -> float:
    """log p(chosen) - log p(rejected): what DPO raises."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32"), AutoTokenizer.from_pretrained(model_dir)
    return answer_log_prob(model, tokenizer, pair["prompt"], pair["chosen"]) - answer_log_prob(
        model, tokenizer, pair["prompt"], pair["rejected"]
    )


def assert_merged_and_moved_to_the_chosen(out, parent_dir) -> None:
    """A standalone model (no LoRA weights left) whose chosen-versus-rejected margin rose: moved toward the chosen
    answers, not merely changed."""
    from transformers import AutoModelForCausalLM

    assert not any("lora" in name for name in AutoModelForCausalLM.from_pretrained(out).state_dict())
    [pair] = card_pairs(1)
    before, after = chosen_margin(parent_dir, pair), chosen_margin(out, pair)
    print(f"chosen margin: {before:.2f} -> {after:.2f} nats")
    assert after > before + 0.5, f"the chosen answer's margin did not rise: {before:.2f} -> {after:.2f}"
    assert (out / "tokenizer.json").is_file()


def test_settings_reject_wrong_types():
    with pytest.raises(ValueError):
        TrainSettings(batch_size="many")


def test_pair_cap_keeps_the_widest_margins():
    frame = candidates([(f"p{i}", f"c{i}", "good", 0.5 + i / 10) for i in range(4)] + [(f"p{i}", f"r{i}", "bad", 0.0) for i in range(4)])
    pairs = build_pairs(frame, TrainSettings(max_pairs=2))
    assert pairs["prompt_id"].to_list() == ["p2", "p3"]


# The old selection: each prompt's best against its worst, kept only where the best reaches an absolute 0.5.
OLD_SELECTION = TrainSettings(min_chosen_reward=0.5, min_z_margin=0.0, min_chosen_z=0.0, pairs_per_prompt=1)


def low_reward_domain(prompts: int = 10) -> pl.DataFrame:
    """Six candidates a prompt whose rewards never pass 0.35, as on a new domain the base model barely handles: one
    answer in the asked format and on topic, one in the format but off topic, the rest failing the format."""
    rows = []
    for p in range(prompts):
        good, off = f'{{"intent": "alarm_set", "note": "set for seven {p}"}}', f'{{"intent": "play_music", "note": "set for six {p}"}}'
        rows += [(f"p{p}", f"p{p}-good", good, 0.35), (f"p{p}", f"p{p}-off", off, 0.15)]
        rows += [(f"p{p}", f"p{p}-text{i}", f"I can help with that {i}", 0.02 * i) for i in range(4)]
    return candidates(rows)


def test_pairs_are_chosen_relative_to_each_prompt_on_a_low_reward_domain():
    frame = low_reward_domain()
    assert build_pairs(frame, OLD_SELECTION).height == 0, "no best answer reaches the old absolute floor"
    pairs = build_pairs(frame, TrainSettings())
    assert pairs["prompt_id"].n_unique() == 10 and set(pairs["chosen_id"]) == {f"p{p}-good" for p in range(10)}
    assert (pairs["chosen_reward"] - pairs["rejected_reward"] >= 0.1).all()
    assert build_pairs(frame, TrainSettings(min_chosen_reward=0.5)).height == 0, "the absolute floor is still there when asked for"


def test_a_prompt_without_a_clearly_better_answer_gives_no_pair():
    frame = candidates(
        [("even", "e1", "same", 0.4), ("even", "e2", "same", 0.4)]  # nothing to prefer
        + [("noise", f"n{i}", "x", 0.30 + i / 100) for i in range(5)]  # a spread of 0.04: noise, however many deviations
        + [("tied", f"t{i}", "x", 0.9) for i in range(9)]  # the best barely above the prompt's mean...
        + [("tied", "t9", "x", 0.0)]  # ...beside one failure: z of the best 0.33
    )
    assert build_pairs(frame, TrainSettings()).height == 0
    assert build_pairs(frame, TrainSettings(min_chosen_z=0.0))["prompt_id"].unique().to_list() == ["tied"]


def test_several_pairs_per_prompt_all_with_the_prompt_best():
    frame = low_reward_domain(3)
    for per_prompt in (1, 2, 3):
        pairs = build_pairs(frame, TrainSettings(pairs_per_prompt=per_prompt))
        assert pairs.group_by("prompt_id").len()["len"].to_list() == [per_prompt] * 3
        assert pairs["chosen_id"].str.ends_with("-good").all() and pairs["rejected_id"].n_unique() == pairs.height


def test_a_rejected_answer_of_the_same_form_comes_first_so_the_pair_teaches_content():
    """The off-topic answer in the chosen one's format (same keys, same length band) is preferred to the wider
    margins of answers failing the format, and to a same-keys answer of another length band."""
    chosen = '{"topic": "card", "reply": "Your new card is on its way."}'
    frame = candidates(
        [
            ("p1", "chosen", chosen, 0.9),
            ("p1", "no-json", "Sorry, I cannot help with that request today.", 0.0),
            ("p1", "rambling", '{"topic": "card", "reply": "' + "so " * 40 + '"}', 0.1),
            ("p1", "off-topic", '{"topic": "cash", "reply": "Your cash is on its way."}', 0.4),
            ("p1", "middling", chosen.replace("new ", ""), 0.7),  # same form but not clearly worse
        ]
    )
    pairs = build_pairs(frame, TrainSettings(pairs_per_prompt=3))
    assert pairs.select("rejected_id", "same_form").rows() == [("off-topic", True), ("no-json", False), ("rambling", False)]
    assert build_pairs(frame, TrainSettings(pairs_per_prompt=1))["rejected_id"].to_list() == ["off-topic"]


def test_the_pair_cap_keeps_every_prompt_first_pair_before_a_second():
    frame = low_reward_domain(4).with_columns(pl.col("reward") * (1 + pl.col("prompt_id").str.slice(1).cast(pl.Float64) / 10))
    pairs = build_pairs(frame, TrainSettings(pairs_per_prompt=3, max_pairs=6))
    assert pairs.group_by("prompt_id", maintain_order=True).len().rows() == [("p0", 1), ("p1", 1), ("p2", 2), ("p3", 2)]
    assert pairs.equals(build_pairs(frame, TrainSettings(pairs_per_prompt=3, max_pairs=6)))


@pytest.mark.parametrize(
    ("pairs", "settings", "expected"),
    [
        (10, TrainSettings(), (2, 4)),  # 5 steps an epoch at 2 a step: 4 epochs reach 16 steps
        (40, TrainSettings(), (8, 4)),  # 5 steps an epoch: more epochs alone reach 16 steps
        (160, TrainSettings(), (8, 1.0)),  # 20 steps in one epoch: as given
        (3, TrainSettings(), (2, 4.0)),  # too few for 16 steps: the smallest batch, the most epochs
        (10, TrainSettings(min_steps=0), (8, 1.0)),
        (10, TrainSettings(epochs=8), (8, 8)),  # never fewer epochs than asked for
    ],
)
def test_the_schedule_reaches_min_steps_on_small_data(pairs, settings, expected):
    assert settings.schedule(pairs) == expected
    assert settings.schedule(pairs) == TrainSettings(**settings.model_dump()).schedule(pairs), "deterministic"


def test_ten_pairs_train_the_scheduled_steps(tiny_model_dir, tmp_path):
    """The trainer follows the schedule (a smaller min_steps than the default, to keep the test short): 10 pairs at 8 a
    step would take 2 steps an epoch and 3 epochs, more than max_epochs, so 4 a step for 2 epochs."""
    settings = TrainSettings(learning_rate=1e-2, min_steps=6, max_epochs=2)
    metrics = train_stage("dpo", str(tiny_model_dir), card_pairs(10), settings, tmp_path / "ckpt", tmp_path / "work")
    assert metrics["steps"] == 6 and (metrics["batch_size"], metrics["epochs"]) == (4, 2)


def test_the_same_candidates_give_the_same_pairs_and_checkpoint():
    """Row order does not matter; every selection and schedule setting is part of the checkpoint's identity."""
    frame = low_reward_domain(5)
    pairs = build_pairs(frame, TrainSettings())
    shuffled = build_pairs(frame.sample(fraction=1.0, shuffle=True, seed=3), TrainSettings())
    assert shuffled.equals(pairs) and checkpoint_id("base:m", TrainSettings(), shuffled) == checkpoint_id("base:m", TrainSettings(), pairs)
    base = checkpoint_id("base:m", TrainSettings(), pairs)[0]
    for change in ({"pairs_per_prompt": 3}, {"min_z_margin": 0.5}, {"min_chosen_z": 0.0}, {"min_steps": 0}, {"max_epochs": 2.0}):
        assert checkpoint_id("base:m", TrainSettings(**change), pairs)[0] != base, change


DISTINCT_PROMPTS = [
    {"prompt_ids": [5, 6, 7, 8, 9], "chosen_ids": [11, 12, 13], "rejected_ids": [31]},
    {"prompt_ids": [9, 8, 7, 6, 5, 4, 3], "chosen_ids": [21], "rejected_ids": [41, 42, 43, 44]},
    {"prompt_ids": [17, 18], "chosen_ids": [51, 52], "rejected_ids": [61, 62]},
]
# An instruction shared by every prompt, as a domain's plain template gives it; the shortest prompt is the
# instruction and one token, the longest adds five.
INSTRUCTION = [70, 71, 72, 73, 74, 75]
SHARED_OPENING = [
    {"prompt_ids": [*INSTRUCTION, 9], "chosen_ids": [11, 12, 13], "rejected_ids": [31]},
    {"prompt_ids": [*INSTRUCTION, 8, 7, 6, 5, 4], "chosen_ids": [21], "rejected_ids": [41, 42, 43, 44]},
    {"prompt_ids": [*INSTRUCTION, 17, 18], "chosen_ids": [51, 52], "rejected_ids": [61, 62]},
]


@pytest.mark.parametrize("examples", [DISTINCT_PROMPTS, SHARED_OPENING], ids=["distinct prompts", "shared instruction"])
def test_shared_prompts_give_trl_log_probs_and_gradients(tiny_model_dir, examples):
    """share_prompts runs each pair's prompt once, and an opening all prompts share once per batch: on a padded
    preference batch from TRL's own collator, the per-token log-probs and the gradients match TRL's fused
    forward, and the pad and prompt positions stay 0."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # as DPOTrainer adds it
    batch = DataCollatorForPreference(pad_token_id=0)(examples)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)

    def log_probs_and_gradient():
        model.zero_grad()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
        (out.log_probs * torch.linspace(0.5, 1.5, out.log_probs.shape[1])).sum().backward()  # weights make every position count
        return out, model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    trl_out, trl_gradient = log_probs_and_gradient()
    share_prompts(model)
    shared_out, shared_gradient = log_probs_and_gradient()
    assert (trl_out.log_probs != 0).sum() == 13  # the answer tokens, nothing else
    for field in ("log_probs", "entropy", "mean_logits"):  # the last two are metrics DPOTrainer logs
        torch.testing.assert_close(getattr(shared_out, field), getattr(trl_out, field), atol=1e-4, rtol=1e-4)
    assert torch.equal(shared_out.is_top1 & trl_out.label_mask, trl_out.is_top1 & trl_out.label_mask)
    torch.testing.assert_close(shared_gradient, trl_gradient, atol=1e-4, rtol=1e-3)
    model.gradient_checkpointing_enable()  # no cache under checkpointing: TRL's own path
    model.train()
    checkpointed_out, _ = log_probs_and_gradient()
    torch.testing.assert_close(checkpointed_out.log_probs, trl_out.log_probs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("break_trl", ["a newer version", "a renamed internal"])
def test_an_untested_trl_leaves_the_forward_to_trl_with_one_warning(monkeypatch, caplog, break_trl):
    """share_prompts patches TRL internals: on another TRL version, or one without an internal it uses, it warns
    once, naming the version, and the model keeps TRL's forward; the round goes on."""
    import types

    import trl
    import trl.trainer.utils

    if break_trl == "a newer version":
        monkeypatch.setattr(trl, "__version__", "1.17.0")
    else:
        monkeypatch.delattr(trl.trainer.utils, "FusedCausalLMOutput")
    trl_forward = object()
    model = types.SimpleNamespace(forward=trl_forward)
    share_prompts(model)
    share_prompts(model)
    assert model.forward is trl_forward and model.shares_prompts is False
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"TRL {trl.__version__} is " in warnings[0] and "TRL's own forward" in warnings[0]


def test_the_records_dataset_keeps_each_prompt_as_it_was():
    """Arrow structs would give every message the fields of all (a tool call's arguments every tool call's keys)."""
    from tao_dagster.training.run import records_dataset

    def call(name, arguments):
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
        }

    answers = {"chosen": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}]}
    records = [
        {"prompt": [{"role": "user", "content": "a"}, call("card_status", {"card": "1234"})], **answers, "tools": "[]"},
        {"prompt": [{"role": "user", "content": "b"}, call("branch", {"city": "Paris"})], **answers, "tools": None},
        {"prompt": [{"role": "user", "content": "c"}], **answers, "tools": None},
    ]
    assert records_dataset(records).to_list() == records


def test_lora_sums_in_fp32_are_peft_s_in_fp32_and_keep_a_small_update_under_bf16_autocast(tiny_model_dir):
    """add_lora_in_fp32 (every algorithm's LoRA layers on a CPU under bf16 autocast): without autocast the layer
    computes what PEFT computes; under autocast an update far below bf16's resolution of the base output survives,
    where PEFT's bf16 sum rounds it away."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tao_dagster.training.fast_forward import add_lora_in_fp32
    from tao_dagster.training.trainer import lora_config

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), lora_config(TrainSettings()))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(std=1e-4)  # early in training: a small update
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(4, layer.in_features)

    def update(autocast: bool) -> torch.Tensor:
        """What the adapter adds to the layer's output."""
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return layer(x).float() - layer.base_layer(x).float()

    exact, peft_bf16 = update(False), update(True)
    fp32_outputs = layer(x)
    add_lora_in_fp32(model)
    torch.testing.assert_close(layer(x), fp32_outputs, atol=0, rtol=0)

    def error(u):
        return float((u - exact).norm() / exact.norm())

    ours = error(update(True))  # measured: 0.004, PEFT's 0.46
    assert ours < 0.02 and error(peft_bf16) > 10 * ours, (ours, error(peft_bf16))
