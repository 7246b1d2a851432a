"""`tao-dagster serve` as an application meets it: the official `openai` client, vLLM on the CPU behind the proxy,
the log files the sensor reads, a champion switch under traffic, no process left after Ctrl-C or SIGTERM, and the
whole loop: the server's own traffic trains the checkpoint it then serves."""

import json
import signal
import threading
import time
from datetime import UTC, datetime

import dagster as dg
import openai
import psutil
import pytest
from transformers import AutoTokenizer

from tao_dagster.defs.flywheel.jobs import prompt_assets
from tao_dagster.domain import load_domain
from tao_dagster.ingest import parse_log_file
from tao_dagster.policies import checkpoint_version
from tao_dagster.settings import core_settings
from tao_dagster.storage import LogSource

from .conftest import BANKING, gate_of, run_round, sensor_tick, tiny_resources
from .support.devserver import free_port, start_tao, tao_serve, wait_for
from .support.models import VLLM_TINY_HEADS, save_tiny_llama

KEY = "sk-planted-serve-key-4e1d"
QUESTION = [{"role": "user", "content": "I lost my card"}]
LINE_KEYS = {"request_id", "timestamp", "request", "response"}


def serve_env(tmp_path, model, domain_file, **extra) -> dict[str, str]:
    home = tmp_path / "home"
    return {
        "TAO_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "TAO_DOMAIN": str(domain_file),
        "TAO_BASE_MODEL": str(model),
        "TAO_LOGS": str(tmp_path / "logs"),  # not there yet: the server creates it
        "TAO_SERVE_ROTATE_SECONDS": "3",
        "TAO_SERVE_POLL_SECONDS": "2",
        **extra,
    }


def closed_lines(logs, count: int, server, timeout: float = 60) -> list[dict]:
    """The log lines of the closed files once they hold `count` exchanges."""

    def enough():
        lines = [json.loads(line) for path in sorted(logs.glob("*.jsonl")) for line in path.read_text().splitlines()]
        return lines if len(lines) >= count else None

    return wait_for(f"{count} logged exchanges", enough, timeout, server, poll=0.5)


def backend_processes(server) -> list[psutil.Process]:
    return psutil.Process(server.pid).children(recursive=True)


@pytest.mark.servers
@pytest.mark.slow
def test_serve_answers_the_openai_client_and_logs_every_exchange_for_the_sensor(tmp_path, tiny_vllm_model_dir, learnable_domain_file):
    env = serve_env(tmp_path, tiny_vllm_model_dir, learnable_domain_file, TAO_SERVE_MODEL="support-bot", TAO_SERVE_API_KEY=KEY)
    logs, sent, received = tmp_path / "logs", [], []
    began = datetime.now(UTC)
    with tao_serve(env, tmp_path / "serve.log", stop_signal=signal.SIGINT) as (url, server):
        client = openai.OpenAI(base_url=url, api_key=KEY)
        (card,) = client.models.list().data
        assert card.id == "support-bot" and card.policy_version == f"base:{tiny_vllm_model_dir.name}" and card.checkpoint_id is None
        snapshot = f"support-bot@base:{tiny_vllm_model_dir.name}"
        assert card.root == snapshot

        sent.append([{"role": "user", "content": "Where is my card?"}])
        answer = client.chat.completions.create(model="support-bot", messages=sent[-1], max_tokens=6)
        assert answer.model == snapshot and answer.choices[0].message.content
        received.append(answer.choices[0].message.content)
        # The current message format (content parts), streamed, usage asked for.
        sent.append([{"role": "user", "content": [{"type": "text", "text": "My card was swallowed by the ATM"}]}])
        stream = client.chat.completions.create(
            model="support-bot", messages=sent[-1], max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        received.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        assert chunks[-1].usage.completion_tokens == 6

        with pytest.raises(openai.NotFoundError, match="use 'support-bot'"):
            client.chat.completions.create(model="gpt-4o", messages=sent[0], max_tokens=4)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong").chat.completions.create(model="support-bot", messages=sent[0])
        with pytest.raises(openai.BadRequestError):  # refused by vLLM, passed on, not logged
            client.chat.completions.create(model="support-bot", messages=sent[0], max_tokens=5000)

        # The open file is invisible to the sensor's listing until it is closed.
        assert [p.suffix for p in logs.iterdir()] == [".part"] and LogSource(str(logs), tmp_path).list_files() == {}
        lines = closed_lines(logs, 2, server)
        assert list(LogSource(str(logs), tmp_path).list_files()) == [p.name for p in logs.glob("*.jsonl")]

        client.chat.completions.create(model="support-bot", messages=sent[0], max_tokens=4)  # open at the Ctrl-C
        backends = backend_processes(server)
        assert len(backends) >= 2  # vLLM's API server and its engine core at least
    assert server.returncode == 130
    assert not [p for p in backends if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    assert not list(logs.glob("*.part"))
    lines = [json.loads(line) for path in sorted(logs.glob("*.jsonl")) for line in path.read_text().splitlines()]
    assert len(lines) == 3 and len({line["request_id"] for line in lines}) == 3
    for line, messages, text in zip(lines, sent, received):
        assert set(line) == LINE_KEYS
        assert line["request"]["messages"] == messages and line["request"]["model"] == "support-bot"  # as received
        assert line["response"]["model"] == snapshot and line["response"]["choices"][0]["message"]["content"] == text
        assert line["response"]["usage"]["completion_tokens"] == 6
        assert began <= datetime.fromisoformat(line["timestamp"]) <= datetime.now(UTC)
    # The model saw the domain's plain prompt: the instruction around the message, as training and evaluation give it.
    domain = load_domain(learnable_domain_file)
    tokenizer = AutoTokenizer.from_pretrained(tiny_vllm_model_dir)
    plain = domain.messages([{"role": "user", "content": "Where is my card?"}])
    assert lines[0]["response"]["usage"]["prompt_tokens"] == len(
        tokenizer.apply_chat_template(plain, add_generation_prompt=True)["input_ids"]
    )

    output = (tmp_path / "serve.log").read_text()
    assert "now serving base:" in output and "interrupted: stopped" in output
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [str(p) for p in files if KEY in p.read_bytes().decode("latin-1")], "the API key leaked"


@pytest.mark.servers
@pytest.mark.slow
def test_a_model_vllm_cannot_load_stops_the_server_with_the_reason(tmp_path, tiny_vllm_model_dir, learnable_domain_file):
    broken = tmp_path / "no-weights"
    broken.mkdir()
    for path in tiny_vllm_model_dir.iterdir():
        if path.suffix != ".safetensors":
            (broken / path.name).write_bytes(path.read_bytes())
    env = serve_env(tmp_path, broken, learnable_domain_file)
    with (tmp_path / "serve.log").open("w") as log:
        server = start_tao(["serve", "--port", str(free_port())], env, log)
        code = server.wait(timeout=600)
    output = (tmp_path / "serve.log").read_text()
    assert code == 1, output[-3000:]
    assert "nothing to serve: the backend for base:no-weights exited with code 1: RuntimeError: Cannot find any model weights" in output
    assert f"its whole log: {tmp_path / 'home' / 'serve'}" in output


def serving(client: openai.OpenAI, checkpoint_id: str):
    """The model card once `checkpoint_id` answers, else None."""
    (card,) = client.models.list().data
    return card if card.checkpoint_id == checkpoint_id else None


def register_checkpoint(home, domain_file, model_dir, checkpoint_id: str) -> str:
    """Record `model_dir` as a trained checkpoint of the domain as a round does (MLflow run and registered version
    under the domain's model name, warehouse row) and promote it; returns its model version."""
    import mlflow
    import polars as pl

    from tao_dagster.warehouse import Warehouse

    settings = core_settings(home, {"domain": {"domain_file": str(domain_file)}})
    with settings.tracking.start_run(run_name=f"dpo-{checkpoint_id}") as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        version, _ = settings.tracking.register(run, checkpoint_id)
    row = {"checkpoint_id": checkpoint_id, "parent": "base", "algorithm": "dpo", "config": "{}", "data_hash": "", "path": str(model_dir)}
    row |= {"mlflow_run_id": run.info.run_id, "model_version": str(version), "metrics": "{}"}
    Warehouse(settings.warehouse_path).upsert("checkpoints", pl.DataFrame([row]))
    settings.tracking.promote(version)
    return str(version)


@pytest.mark.servers
@pytest.mark.slow
def test_a_promoted_checkpoint_takes_over_without_a_failed_request(
    tmp_path, embedded_model_dir, tiny_vllm_model_dir, learnable_domain_file
):
    home = tmp_path / "home"
    checkpoint = save_tiny_llama(embedded_model_dir, home / "checkpoints" / "ckpt-switch", seed=1, **VLLM_TINY_HEADS)
    env = serve_env(tmp_path, tiny_vllm_model_dir, learnable_domain_file)
    answered, failures, stop = [[], [], []], [], threading.Event()

    def traffic(client: openai.OpenAI, answers: list) -> None:
        """One request after another: (when it was answered, the snapshot that answered)."""
        while not stop.is_set():
            try:
                answer = client.chat.completions.create(model="tao-banking", messages=QUESTION, max_tokens=4)
                answers.append((time.monotonic(), answer.model))
            except openai.OpenAIError as err:
                failures.append(repr(err))

    with tao_serve(env, tmp_path / "serve.log") as (url, server):
        client = openai.OpenAI(base_url=url, api_key="unused")
        old_backend = psutil.Process(server.pid).children()
        senders = [threading.Thread(target=traffic, args=(client, answers)) for answers in answered]
        for sender in senders:
            sender.start()
        try:
            version = register_checkpoint(home, learnable_domain_file, checkpoint, "ckpt-switch")
            card = wait_for("the new champion", lambda: serving(client, "ckpt-switch"), 600, server)
            switched = time.monotonic()
            wait_for("the old backend to stop", lambda: not any(p.is_running() for p in old_backend), 120, server)
            time.sleep(2)
        finally:
            stop.set()
            for sender in senders:
                sender.join()
        assert card.model_version == version and card.policy_version == checkpoint_version("ckpt-switch")
        assert card.root == "tao-banking@ckpt:ckpt-switch"
        backends = backend_processes(server)
    assert server.returncode == -signal.SIGTERM  # uvicorn stops, then lets SIGTERM end the process
    assert not [p for p in backends if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert failures == []
    old, new = f"tao-banking@base:{tiny_vllm_model_dir.name}", "tao-banking@ckpt:ckpt-switch"
    for answers in answered:  # each client's requests follow one another: the base model, then the checkpoint, never back
        models = [model for _, model in answers]
        first_new = models.index(new)
        assert set(models[:first_new]) == {old} and set(models[first_new:]) == {new} and first_new > 1
        assert sum(1 for at, _ in answers if at > switched) > 1
    assert "stopped the backend for base:" in (tmp_path / "serve.log").read_text()


@pytest.mark.servers
@pytest.mark.slow
def test_the_servers_own_traffic_trains_the_checkpoint_it_then_serves(tmp_path, tiny_vllm_model_dir, learnable_domain_file, monkeypatch):
    """The loop: prompts through the server -> its log files -> the sensor -> scored partitions -> a round -> the
    gate promotes -> the server answers with the new checkpoint."""
    home, logs = tmp_path / "home", tmp_path / "logs"
    monkeypatch.setenv("TAO_HOME", str(home))  # this process's rounds write checkpoints where the server finds them
    conversations = [row.messages for row in parse_log_file(BANKING / "logs" / "2026-11-02.csv").rows[:30]]
    with tao_serve(serve_env(tmp_path, tiny_vllm_model_dir, learnable_domain_file), tmp_path / "serve.log") as (url, server):
        client = openai.OpenAI(base_url=url, api_key="unused")
        for messages in conversations:
            client.chat.completions.create(model="tao-banking", messages=messages, max_tokens=8)
        closed_lines(logs, len(conversations), server)
        resources = tiny_resources(home, logs, tiny_vllm_model_dir, learnable_domain_file)
        with dg.instance_for_test() as instance:
            keys = [r.partition_key for r in sensor_tick(instance, resources["logs"], None).run_requests]
            assert keys == sorted(p.name for p in logs.glob("*.jsonl"))
            for key in keys:
                scored = dg.materialize(prompt_assets, instance=instance, resources=resources, partition_key=key)
                counts = {k: v.value for k, v in scored.asset_materializations_for_node("raw_prompts")[0].metadata.items()}
                assert counts["quarantined"] == 0 and counts["rows_read"] == counts["accepted"] + counts["duplicates"]
            db = resources["warehouse"].get()
            stored = [json.loads(m) for m in db.query("select messages from prompts")["messages"]]
            assert sorted(map(json.dumps, stored)) == sorted({json.dumps(m) for m in conversations})  # as the application sent them
            # The server's replies are candidates too, named by the snapshot that gave them.
            production = db.query("select policy_version, count(*) as n from candidates where strategy = 'production' group by all")
            assert production["policy_version"].to_list() == [f"production:tao-banking@base:{tiny_vllm_model_dir.name}"]
            round1 = run_round(instance, resources, learning_rate=3e-3, epochs=8, sft_weight=2.0, lora_r=32, lora_alpha=64)
            assert gate_of(round1).passed, gate_of(round1).metadata["reason"].value
            ckpt = round1.asset_materializations_for_node("tuned_checkpoint")[0].metadata["checkpoint_id"].value
        wait_for("the promoted checkpoint", lambda: serving(client, ckpt), 600, server)
        answer = client.chat.completions.create(model="tao-banking", messages=conversations[0], max_tokens=8)
        assert answer.model == f"tao-banking@ckpt:{ckpt}"
