"""The readers of the traces users have, on files written by the libraries that write them: the official `openai`
client and types, opentelemetry-sdk, pyarrow; Langfuse's export by hand, after its documented shape. Every record
read is a row or a quarantined row, a bad record is quarantined with its line and reason, and the others go on."""

import gzip
import json
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tao_dagster.ingest import parse_log_file, prompt_id

from .support.traces import CONVERSATION, KEPT, STARTED, TOOLS, gateway_log, jsonl, langfuse_observation, otel_spans


def accounted(parsed, written: int) -> None:
    """Every record written is a row or a quarantined row, once."""
    numbers = [r.line for r in parsed.rows] + [b.line for b in parsed.bad]
    assert len(numbers) == len(set(numbers)) == parsed.rows_read == written


def test_chat_completions_logs_keep_the_whole_conversation_the_reply_and_the_call(tmp_path):
    other = [{"role": "user", "content": "How do I top up?"}]
    records = gateway_log([CONVERSATION, other])
    bad = {"request_id": "req-x", "request": {"model": "gpt-4o-mini"}, "response": None}
    path = tmp_path / "gateway.jsonl"
    path.write_text(jsonl([records[0], bad, records[1]]))
    parsed = parse_log_file(path)
    assert parsed.log_format == "chat_completions"
    accounted(parsed, 3)
    first = parsed.rows[0].trace
    assert (parsed.rows[0].line, first.messages, first.tools) == (1, KEPT, TOOLS)
    assert (first.reply, first.model, first.request_id, first.requested_at) == (
        "Your card shipped (0).",
        "gpt-4o-mini-2024-07-18",
        "req-0",
        STARTED,
    )
    assert parsed.rows[1].line == 3 and parsed.rows[1].messages == other
    assert [(b.line, b.reason) for b in parsed.bad] == [(2, "the request has no 'messages'")]


@pytest.mark.parametrize("name", ["gateway.jsonl.gz", "gateway.json", "gateway.json.gz"])
def test_gzip_and_json_array_files_read_like_json_lines(tmp_path, name):
    records = gateway_log([CONVERSATION, [{"role": "user", "content": "How do I top up?"}]])
    text = json.dumps(records, indent=2) if ".json." in name or name.endswith(".json") else jsonl(records)
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    parsed = parse_log_file(path)
    assert parsed.bad == [] and [r.trace.request_id for r in parsed.rows] == ["req-0", "req-1"]
    assert parsed.rows[0].messages == KEPT


def test_a_gzip_file_cut_short_keeps_its_whole_records(tmp_path):
    records = gateway_log([[{"role": "user", "content": f"question {i}"}] for i in range(40)], tools=None)
    data = gzip.compress(jsonl(records).encode())
    path = tmp_path / "rotating.jsonl.gz"
    path.write_bytes(data[: len(data) * 3 // 4])  # still being written
    parsed = parse_log_file(path)
    assert 10 < len(parsed.rows) < 40 and [r.line for r in parsed.rows] == list(range(1, len(parsed.rows) + 1))
    [cut] = parsed.bad
    assert cut.line == len(parsed.rows) + 1 and cut.reason.endswith("the file may have been cut short)")
    (tmp_path / "junk.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 not deflate")
    [junk] = parse_log_file(tmp_path / "junk.jsonl.gz").bad
    assert junk.line == 0 and junk.reason.startswith("not valid gzip data")


def test_a_json_array_quarantines_a_bad_element_and_stops_at_broken_syntax(tmp_path):
    good = {"messages": [{"role": "user", "content": "How do I top up?"}]}
    path = tmp_path / "export.json"
    path.write_text(json.dumps([good, {"messages": []}, "text", good]))  # one line: records are numbered by place
    parsed = parse_log_file(path)
    assert [r.line for r in parsed.rows] == [1, 4]
    assert [(b.line, b.reason) for b in parsed.bad] == [(2, "'messages' is not a non-empty list"), (3, "record is not a JSON object")]
    path.write_text('[\n  {"prompt": "one"},\n  {"prompt": "two"},\n  {"prompt": "thr\n')  # cut short
    parsed = parse_log_file(path)
    assert [(r.line, r.messages[0]["content"]) for r in parsed.rows] == [(2, "one"), (3, "two")]
    assert [b.line for b in parsed.bad] == [4] and parsed.bad[0].reason.startswith("malformed JSON")


def test_openai_batch_input_is_read_and_output_lines_say_where_their_prompt_is(tmp_path):
    [record] = gateway_log([CONVERSATION])
    lines = [
        {"custom_id": "task-1", "method": "POST", "url": "/v1/chat/completions", "body": record["request"]},
        {"id": "batch_req_1", "custom_id": "task-1", "response": {"status_code": 200, "request_id": "r1", "body": record["response"]}},
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text(jsonl(lines))
    parsed = parse_log_file(path)
    assert parsed.log_format == "openai_batch"
    accounted(parsed, 2)
    trace = parsed.rows[0].trace
    assert (trace.messages, trace.tools, trace.request_id, trace.model, trace.reply) == (KEPT, TOOLS, "task-1", "gpt-4o-mini", None)
    assert parsed.bad[0].line == 2 and "ingest the batch input file" in parsed.bad[0].reason


def test_fine_tuning_lines_keep_tools_and_the_last_assistant_turn_as_the_reply(tmp_path):
    finished = [*CONVERSATION, {"role": "assistant", "content": "It shipped on Monday."}]
    path = tmp_path / "train.jsonl"
    path.write_text(
        jsonl([{"messages": finished, "tools": TOOLS, "parallel_tool_calls": False}, {"messages": [{"role": "system", "content": "x"}]}])
    )
    parsed = parse_log_file(path)
    assert parsed.log_format == "messages"
    accounted(parsed, 2)
    assert (parsed.rows[0].messages, parsed.rows[0].trace.tools, parsed.rows[0].trace.reply) == (KEPT, TOOLS, "It shipped on Monday.")
    assert [(b.line, b.reason) for b in parsed.bad] == [(2, "conversation has no user turn to answer")]


def test_the_log_format_setting_reads_every_record_as_that_format(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(jsonl([{"prompt": "How do I top up?"}, *gateway_log([CONVERSATION])]))
    assert [r.line for r in parse_log_file(path).rows] == [1]  # auto: the first record says `messages`
    forced = parse_log_file(path, log_format="chat_completions")
    assert [r.line for r in forced.rows] == [2]
    assert [(b.line, b.reason) for b in forced.bad] == [(1, "not a chat-completions log record (no 'request')")]
    with pytest.raises(ValueError, match="log_format must be one of"):
        parse_log_file(path, log_format="jsonl")


@pytest.mark.parametrize("export", ["console", "otlp"])
def test_opentelemetry_genai_spans_of_both_conventions(tmp_path, export):
    from google.protobuf.json_format import MessageToJson
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    spans = otel_spans()
    path = tmp_path / "spans.json"
    # ConsoleSpanExporter writes each span's to_json() one after another; the collector's file exporter, OTLP JSON.
    path.write_text("".join(s.to_json() + "\n" for s in spans) if export == "console" else MessageToJson(encode_spans(spans), indent=None))
    parsed = parse_log_file(path)
    assert (parsed.log_format, parsed.skipped, parsed.rows_read) == ("otel", 1, 3)  # the HTTP span is no row
    current, older = (r.trace for r in parsed.rows)
    assert current.messages == older.messages == [KEPT[0], KEPT[1], KEPT[2], KEPT[3]]
    assert current.tools == older.tools == TOOLS
    assert (current.reply, current.model, current.request_id) == ("It shipped.", "gpt-4o-mini-2024-07-18", "chatcmpl-7")
    assert (older.reply, older.model) == ("It shipped.", "gpt-3.5-turbo")
    assert abs((current.requested_at - datetime.now(UTC).replace(tzinfo=None)).total_seconds()) < 600
    [uncaptured] = parsed.bad
    assert "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in uncaptured.reason


def test_a_langfuse_observations_export(tmp_path):
    page = {
        "data": [
            langfuse_observation(1),
            langfuse_observation(2, input={"messages": CONVERSATION, "tools": TOOLS}, output="It shipped on Monday."),
            langfuse_observation(3, type="SPAN", input={"query": "card"}, output=None),
            langfuse_observation(4, input=None),
        ],
        "meta": {"page": 1, "limit": 50, "totalItems": 4, "totalPages": 1},
    }
    path = tmp_path / "observations.json"
    path.write_text(json.dumps(page, indent=2))
    parsed = parse_log_file(path)
    assert (parsed.log_format, parsed.skipped, parsed.rows_read) == ("langfuse", 1, 3)
    first, second = (r.trace for r in parsed.rows)
    assert (first.messages, first.reply, first.request_id) == (
        [{"role": "user", "content": "How do I top up?"}],
        "Open Cards > Top up.",
        "obs-1",
    )
    assert (second.messages, second.tools, second.reply) == (KEPT, TOOLS, "It shipped on Monday.")
    assert second.requested_at == datetime(2026, 11, 2, 9, 30, 2) and second.model == "gpt-4o-mini-2024-07-18"
    assert [(b.line, b.reason) for b in parsed.bad] == [(4, "the generation's input is neither messages nor text")]
    lines = tmp_path / "observations.jsonl"  # an export as JSON Lines reads the same
    lines.write_text(jsonl(page["data"]))
    assert [r.trace for r in parse_log_file(lines).rows] == [first, second]


def test_parquet_inference_tables(tmp_path):
    records = gateway_log([CONVERSATION, [{"role": "user", "content": "How do I top up?"}]])
    table = pa.table(
        {
            "databricks_request_id": ["db-1", "db-2", "db-3"],
            "request_time": pa.array([STARTED, STARTED, STARTED], pa.timestamp("ms")),
            "status_code": [200, 200, 500],
            "request": [json.dumps(records[0]["request"]), json.dumps(records[1]["request"]), "{not json"],
            "response": [json.dumps(records[0]["response"]), json.dumps(records[1]["response"]), None],
        }
    )
    pq.write_table(table, tmp_path / "inference.parquet")
    parsed = parse_log_file(tmp_path / "inference.parquet")
    assert parsed.log_format == "chat_completions"
    accounted(parsed, 3)
    first = parsed.rows[0].trace
    assert (first.messages, first.tools, first.request_id, first.requested_at) == (KEPT, TOOLS, "db-1", STARTED)
    assert first.reply == "Your card shipped (0)."
    assert [b.line for b in parsed.bad] == [3] and parsed.bad[0].reason.startswith("'request' is text that is not JSON")

    messages = pa.table(
        {
            "messages": [[{"role": "user", "content": "Where is my card?"}], [{"role": "user", "content": "How do I top up?"}]],
            "response": ['{"topic": "card_arrival"}', "Open Cards > Top up."],  # a reply in the domain's JSON stays text
        }
    )
    pq.write_table(messages, tmp_path / "messages.parquet")
    rows = parse_log_file(tmp_path / "messages.parquet").rows
    assert [(r.messages[0]["content"], r.trace.reply) for r in rows] == [
        ("Where is my card?", '{"topic": "card_arrival"}'),
        ("How do I top up?", "Open Cards > Top up."),
    ]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    [broken] = parse_log_file(tmp_path / "broken.parquet").bad
    assert broken.line == 0 and broken.reason.startswith("not a readable Parquet file")


def test_prompt_ids_of_tool_conversations():
    plain = [{"role": "user", "content": "Where is my card?"}]
    assert prompt_id(plain) == prompt_id(plain, None) == prompt_id(plain, [])  # plain prompts keep their ids
    assert prompt_id(KEPT) != prompt_id(KEPT, TOOLS) != prompt_id(plain, TOOLS)
    other_result = [*KEPT[:3], {**KEPT[3], "content": "lost in the post"}]
    assert prompt_id(KEPT) != prompt_id(other_result)
    new_call_id = [*KEPT[:2], {**KEPT[2], "tool_calls": [{**KEPT[2]["tool_calls"][0], "id": "call_9"}]}, KEPT[3]]
    assert prompt_id(KEPT) == prompt_id(new_call_id)  # call ids differ per request, the call does not


def test_a_tool_conversation_reaches_the_chat_template_whole(embedded_model_dir):
    """The instruction goes into the last user turn, the tool turns after it stay, and the tools and calls reach a
    template that shows them, as tool-calling models' templates do (the embedded model's shows neither)."""
    from transformers import AutoTokenizer

    from tao_dagster.domain import load_domain
    from tao_dagster.generation import render

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    tokenizer.chat_template = (
        "{% for tool in tools or [] %}[tool {{ tool.function.name }}]\n{% endfor %}"
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% for call in m.tool_calls or [] %}[call {{ call.function.name }} {{ call.function.arguments | tojson }}]{% endfor %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    spec = load_domain("assets/banking/domain.yaml")
    request = spec.strategy_request(KEPT, spec.plain_strategy(), TOOLS)
    assert request.messages[1]["content"].endswith("Message: Where is my card?") and request.messages[2:] == KEPT[2:]
    text = tokenizer.decode(render(tokenizer, request))
    assert text.startswith("[tool card_status]\n<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith(
        '<|im_start|>assistant\n[call card_status {"card": "1234"}]<|im_end|>\n'
        "<|im_start|>tool\nshipped on Monday<|im_end|>\n<|im_start|>assistant\n"
    )
