"""Shared fixtures: the embedded model converted once per machine, and a tiny random model built
from a config with the embedded tokenizer, for tests where the model's quality does not matter."""

import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

from tao_dagster.defs.checkpoint.gate import promotion_gate
from tao_dagster.defs.flywheel.jobs import round_assets
from tao_dagster.defs.flywheel.sensors import new_log_files
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.resources import ArtifactStoreResource, FlywheelResource, LogSourceResource, default_resources
from tao_dagster.models import resolve_base_model
from tao_dagster.paths import PROJECT_ROOT

from .support.models import VLLM_TINY_HEADS, save_tiny_llama
from .support.servers import S3_CREDENTIALS, postgres_bin, postgres_server, s3_server

# The same cache the demo uses: the GGUF conversion (about 25 s) happens once per machine.
MODEL_CACHE = PROJECT_ROOT / ".tao_home" / "cache"
BANKING = PROJECT_ROOT / "assets" / "banking"


def write_demo_log(path: Path, first: int, count: int, demo: str = "banking") -> None:
    """A CSV log of `count` real queries of a demo domain, starting at query `first` of the demo's first day."""
    first_day = sorted((PROJECT_ROOT / "assets" / demo / "logs").glob("*.csv"))[0]
    lines = first_day.read_text().splitlines()
    path.write_text("\n".join([lines[0], *lines[1 + first : 1 + first + count]]) + "\n")


def learnable_domain(folder: Path, demo: str = "banking") -> Path:
    """A demo domain cut down for the tiny model: two strategies (plain, and the answer's JSON opened), 8 tokens, and
    one scorer that rewards answers opening the JSON object, which a tiny model can learn in a few steps."""
    spec = yaml.safe_load((PROJECT_ROOT / "assets" / demo / "domain.yaml").read_text())
    field = next(iter(spec["scorers"][0]["fields"]))  # the demo's answer field: topic, scenario
    opening = f'{{"{field}": "'
    spec["max_tokens"] = 8
    spec["strategies"] = [
        {"name": "plain", "temperature": 0.7, "samples": 1},
        {"name": "json_prefix", "response_prefix": opening, "temperature": 0.8, "samples": 2},
    ]
    spec["scorers"] = [{"name": "starts_json", "kind": "regex", "pattern": "^" + re.escape(opening)}]
    spec["evaluation"] = {}
    # A gold set, as a user who judged a few answers would give it: calibration only reports on it.
    answer = (opening + 'card"}').replace('"', '""')
    (folder / "gold.csv").write_text(f'prompt,response,score\nWhere is my card?,"{answer}",1\nWhere is my card?,hello,0\n')
    spec["calibration"] = {"gold": "gold.csv"}
    path = folder / "domain.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def learnable_domain_file(tmp_path) -> Path:
    """The banking demo as `learnable_domain` cuts it down."""
    return learnable_domain(tmp_path)


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    return Path(resolve_base_model("embedded", MODEL_CACHE))


@pytest.fixture(scope="session")
def tiny_model_dir(embedded_model_dir, tmp_path_factory) -> Path:
    return save_tiny_llama(embedded_model_dir, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_vllm_model_dir(embedded_model_dir, tmp_path_factory) -> Path:
    """The tiny model with 32-wide attention heads, the narrowest vLLM's CPU attention runs (it refuses 16)."""
    return save_tiny_llama(embedded_model_dir, tmp_path_factory.mktemp("tiny-vllm-model"), **VLLM_TINY_HEADS)


def tiny_resources(home: Path, logs: Path, model: Path, domain_file: Path, artifacts: ArtifactStoreResource | None = None) -> dict:
    """The resources of a project home with the tiny model on a domain it can learn, its logs in a local folder."""
    resources = default_resources(
        home,
        {
            "domain": {"domain_file": str(domain_file)},
            "logs": {"location": str(logs)},
            "policy": {"base_model": str(model), "engine": "transformers"},
            "flywheel": {"min_new_prompts": 5},
        },
    )
    return {**resources, **({"artifacts": artifacts} if artifacts else {})}


def run_round(instance, resources, gate: bool = True, **train) -> dg.ExecuteInProcessResult:
    """tuned_checkpoint, its promotion gate (unless `gate` is false) and eval_report, with DPO settings for a
    handful of pairs."""
    config = {"batch_size": 4, "min_chosen_reward": 0.0, "min_margin": 0.0, "max_pairs": 0, "min_steps": 0, **train}
    return dg.materialize(
        [*round_assets, promotion_gate] if gate else round_assets,
        instance=instance,
        resources=resources,
        run_config={"ops": {"tuned_checkpoint": {"config": config}}},
        raise_on_error=False,
    )


def gate_of(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (gate,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "promotion_gate"]
    return gate


def sensor_tick(instance, logs: LogSourceResource, cursor: str | None, flywheel: FlywheelResource | None = None) -> dg.SensorResult:
    """One sensor evaluation; like the daemon, add the partitions it asks for (build_sensor_context does not)."""
    flywheel = flywheel or FlywheelResource()
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"logs": logs, "flywheel": flywheel}) as context:
        result = new_log_files(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(log_files.name, list(request.partition_keys))
    return result


@pytest.fixture
def s3_endpoint(monkeypatch):
    """moto's S3 server on a free loopback port, with test credentials in the environment; always stopped."""
    with s3_server() as url:
        for var, value in S3_CREDENTIALS.items():
            monkeypatch.setenv(var, value)
        yield url


@pytest.fixture
def postgres_cluster(monkeypatch):
    """A throwaway PostgreSQL cluster (a PostgresServer, which a test may stop and start), its DAGSTER_PG_* variables
    set as deploy/dagster.prod.yaml reads them; always stopped. Skipped where Debian's postgresql package is not
    installed (`make system` installs it)."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed")
    with postgres_server() as server:
        for var, value in server.variables.items():
            monkeypatch.setenv(var, value)
        yield server


@pytest.fixture
def postgres(postgres_cluster) -> dict[str, str]:
    """The DAGSTER_PG_* variables of a throwaway PostgreSQL cluster (see postgres_cluster)."""
    return postgres_cluster.variables
