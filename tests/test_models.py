import json

import pytest

from tao_dagster.models import resolve_base_model


def test_embedded_model_is_converted_once_to_safetensors(embedded_model_dir, tmp_path):
    assert (embedded_model_dir / "model.safetensors").is_file()
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert "quantization_config" not in config  # vLLM would take it for a GGUF checkpoint
    # Resolving again reuses the cache instead of converting.
    assert resolve_base_model("embedded", embedded_model_dir.parents[1]) == str(embedded_model_dir)


def test_local_directory_and_hub_id(tiny_model_dir, tmp_path):
    assert resolve_base_model(str(tiny_model_dir), tmp_path) == str(tiny_model_dir.resolve())
    assert resolve_base_model("HuggingFaceTB/SmolLM2-360M-Instruct", tmp_path) == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_missing_paths_fail_with_the_setting_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="base_model: GGUF file"):
        resolve_base_model(str(tmp_path / "model.gguf"), tmp_path)
    with pytest.raises(FileNotFoundError, match="base_model: local path"):
        resolve_base_model("./no/such/model", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_base_model(str(tmp_path / "empty"), tmp_path)
