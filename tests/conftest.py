"""Shared fixtures: the embedded model converted once per machine, and a tiny random model built
from a config with the embedded tokenizer, for tests where the model's quality does not matter."""

from pathlib import Path

import pytest

from tao_dagster.defs.resources import PROJECT_ROOT
from tao_dagster.models import resolve_base_model

# The same cache the demo uses: the GGUF conversion (about 25 s) happens once per machine.
MODEL_CACHE = PROJECT_ROOT / ".tao_home" / "cache"


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    return Path(resolve_base_model("embedded", MODEL_CACHE))


@pytest.fixture(scope="session")
def tiny_model_dir(embedded_model_dir, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
