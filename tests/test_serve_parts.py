"""The parts of `tao-dagster serve` that need no model: rotated log files (local and S3), the prompt the model
sees, and a stream put back together for the log."""

import json
import time

import boto3
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tao_dagster.domain import load_domain
from tao_dagster.serving.proxy import assemble, with_instruction
from tao_dagster.serving.tracelog import TraceLog, exchange
from tao_dagster.storage import LogSource, s3_client

from .conftest import BANKING


def record(n: int) -> dict:
    answer = {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": "m@base:x", "choices": []}
    return exchange(f"req-{n}", 1796140000.25, {"model": "m", "messages": [{"role": "user", "content": f"question {n}"}]}, answer)


def test_log_files_rotate_by_size_and_age_and_the_listing_sees_only_closed_ones(tmp_path):
    logs = LogSource(str(tmp_path / "logs"), tmp_path / "cache")
    traces = TraceLog(logs, tmp_path / "spool", rotate_bytes=600, rotate_seconds=0.5)
    for n in range(5):
        traces.write(record(n))
    closed = sorted(logs.list_files())
    assert closed and all(key.endswith(".jsonl") for key in closed)
    assert len(list((tmp_path / "logs").glob("*.part"))) == 1  # the open one, not listed
    time.sleep(0.6)
    traces.rotate_if_old()
    lines = [json.loads(line) for key in sorted(logs.list_files()) for line in (tmp_path / "logs" / key).read_text().splitlines()]
    assert [line["request_id"] for line in lines] == [f"req-{n}" for n in range(5)]
    assert lines[0]["timestamp"] == "2026-12-01T15:46:40.250Z" and not list((tmp_path / "logs").glob("*.part"))
    traces.rotate_if_old()  # nothing open: no empty file
    assert len(logs.list_files()) == len(closed) + 1


def test_log_files_reach_an_s3_location_whole_once_closed(tmp_path, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    boto3.client("s3").create_bucket(Bucket="traffic")
    logs = LogSource("s3://traffic/prod/logs", tmp_path / "cache", s3_client)
    traces = TraceLog(logs, tmp_path / "spool", rotate_bytes=10**6, rotate_seconds=60)
    traces.write(record(1))
    assert logs.list_files() == {}  # nothing uploaded while the file is open
    traces.rotate()
    (key,) = logs.list_files()
    local, _ = logs.fetch(key, logs.list_files())
    assert json.loads(local.read_text())["request_id"] == "req-1" and not list((tmp_path / "spool").iterdir())


def test_the_model_sees_the_plain_prompt_around_the_last_user_turn_as_ingestion_reads_it():
    domain = load_domain(BANKING / "domain.yaml")
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Where is"}, {"type": "image_url"}, {"type": "text", "text": "my card?"}]}
    ]
    plain = domain.messages([{"role": "user", "content": "Where is\nmy card?"}])
    assert with_instruction(domain, parts) == plain
    call = {"id": "a", "type": "function", "function": {"name": "card_status", "arguments": "{}"}}
    tool_turns = [{"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "tool", "content": "{}", "tool_call_id": "a"}]
    assert with_instruction(domain, [*parts, *tool_turns]) == [*plain, *tool_turns]  # tool turns as sent
    for messages in ([{"role": "system", "content": "no user turn"}], [{"content": "no role"}], [], "not a list", None):
        assert with_instruction(domain, messages) is messages


def test_a_stream_becomes_the_chat_completion_it_amounts_to():
    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m@ckpt:1", "choices": [choice] if choices else []}
        return ChatCompletionChunk.model_validate({**body, "usage": usage}).model_dump(exclude_none=True)

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_", "arguments": '{"ci'}}
    chunks = [
        chunk({"role": "assistant", "content": "Let me "}),
        chunk({"content": "check."}),
        chunk({"tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": 'ty": "Oslo"}'}}]}, "tool_calls"),
        chunk({}, usage={"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}, choices=False),
    ]
    completion = ChatCompletion.model_validate(assemble(chunks))  # the shape the log promises, read by openai's own type
    message = completion.choices[0].message
    assert message.content == "Let me check." and completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls[0].function.name == "get_weather" and json.loads(message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert completion.usage.total_tokens == 14 and completion.model == "m@ckpt:1" and completion.id == "c1"
