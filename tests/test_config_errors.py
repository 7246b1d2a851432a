"""Misconfiguration fails when the code location loads, naming the setting and the fix."""

import pytest
import yaml

from tao_dagster.defs.resources import default_resources

from .conftest import BANKING


@pytest.fixture(autouse=True)
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAO_HOME", str(tmp_path / "home"))
    for var in ("TAO_DOMAIN", "TAO_LOGS", "TAO_BASE_MODEL"):
        monkeypatch.delenv(var, raising=False)


def test_the_defaults_load():
    assert set(default_resources()) == {"warehouse", "domain", "logs", "flywheel", "artifacts", "policy", "mlflow"}


@pytest.mark.parametrize(
    "value, message",
    [
        ("/no/such/model", r"base_model: local path /no/such/model does not exist: set TAO_BASE_MODEL"),
        ("/no/such/model.gguf", r"base_model: GGUF file /no/such/model.gguf does not exist: set TAO_BASE_MODEL"),
    ],
)
def test_an_unknown_base_model_path(monkeypatch, value, message):
    monkeypatch.setenv("TAO_BASE_MODEL", value)
    with pytest.raises(FileNotFoundError, match=message):
        default_resources()


def test_a_model_directory_without_config(monkeypatch, tmp_path):
    monkeypatch.setenv("TAO_BASE_MODEL", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"has no config.json: set TAO_BASE_MODEL"):
        default_resources()


def test_an_unreadable_log_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TAO_LOGS", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"log location .*missing is not a readable folder: create it, or set TAO_LOGS"):
        default_resources()


@pytest.mark.parametrize(
    "scorer, message",
    [
        ({"name": "x", "kind": "oracle"}, r"scorer 'x': unknown kind 'oracle'"),
        ({"name": "fmt", "kind": "json_fields"}, r"scorer 'fmt' \(json_fields\) needs the parameter\(s\) fields"),
        ({"name": "re", "kind": "regex", "pattern": "(unclosed"}, r"scorer 're' \(regex\): pattern '\(unclosed' is not a regular"),
        ({"name": "sql", "kind": "sql_execution", "database": "no.sql"}, r"scorer .sql. \(sql_execution\): database .*no.sql is not"),
        ({"name": "own", "kind": "python", "callable": "no_such.mod:f"}, r"scorer 'own' \(python\): cannot import 'no_such.mod:f'"),
        ({"name": "js", "kind": "json_schema", "schema_file": "no.json"}, r"scorer 'js' \(json_schema\): schema_file .*no.json is not"),
        ({"name": "len", "kind": "length", "unit": "tokens", "max": 9}, r"scorer 'len' \(length\): unit must be words or chars"),
    ],
)
def test_a_bad_scorer(monkeypatch, tmp_path, scorer, message):
    spec = yaml.safe_load((BANKING / "domain.yaml").read_text())
    spec["scorers"] = [scorer]
    (tmp_path / "domain.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("TAO_DOMAIN", str(tmp_path / "domain.yaml"))
    with pytest.raises(ValueError, match=r"TAO_DOMAIN: domain file .*domain.yaml: " + message):
        default_resources()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("TAO_GPUS", "two", "TAO_GPUS: 'two' is not a number of GPUs"),
        ("TAO_PROFILE", "k8s", "TAO_PROFILE: 'k8s' is not a profile"),
        ("TAO_LOG_FORMAT", "jsonl", "TAO_LOG_FORMAT: 'jsonl' is not a log format; use one of auto, chat_completions"),
    ],
)
def test_deployment_settings_are_checked(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        default_resources()
