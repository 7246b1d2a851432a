"""The tiny random model the tests and benchmarks build."""

# Two 32-wide heads (one of keys and values) instead of four 16-wide ones: vLLM's CPU attention needs 32 or more.
VLLM_TINY_HEADS = {"num_attention_heads": 2, "num_key_value_heads": 1}


def tiny_llama_config(tokenizer, **overrides):
    """A two-layer, 64-wide Llama config for the embedded tokenizer: a random model for tests and
    benchmarks where the model's quality does not matter, only its shapes and plumbing."""
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaConfig(**{**settings, **overrides})


def save_tiny_llama(tokenizer_dir, out, seed: int = 0, **overrides):
    """A tiny random model with the tokenizer of `tokenizer_dir`, saved in bf16 to `out` with that tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_llama_config(
        tokenizer,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **overrides,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
