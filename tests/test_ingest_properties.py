"""Properties of the log parser over generated input: it never raises, every row read is accounted for once,
and what it accepts is what was written."""

import codecs
import csv
import io
import json
from typing import get_args

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tao_dagster.ingest import parse_log_file
from tao_dagster.traces import ROLES, LogFormatName

from .support.traces import CONVERSATION, TOOLS, gateway_log, langfuse_observation, otel_spans

MAX_CHARS = 300
# The parser writes one file per example into pytest's tmp_path; each example overwrites it.
parser_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Text a prompt may hold: anything but control characters (tab and line breaks aside) and lone surrogates.
prompt_text = st.text(st.characters(exclude_categories=("Cc", "Cs"), include_characters="\t\n\r"), min_size=1, max_size=60).filter(
    str.strip
)


def check_invariants(parsed, lines_in_file: int) -> None:
    """Every row read is accounted for exactly once, at a real line, and accepted rows are usable."""
    lines = [r.line for r in parsed.rows] + [b.line for b in parsed.bad]
    assert len(lines) == len(set(lines)), "two rows share a line: the warehouse keys them by line"
    assert all(1 <= line <= lines_in_file for line in lines) or (lines == [0] and parsed.rows == [])
    for bad in parsed.bad:
        assert bad.reason
        bad.raw.encode()  # storable as UTF-8 text
    for row in parsed.rows:
        assert row.messages[-1]["role"] in ("user", "tool") and any(m["role"] == "user" and m["content"].strip() for m in row.messages)
        assert sum(len(m["content"]) for m in row.messages) <= MAX_CHARS
        json.dumps(row.messages, ensure_ascii=False).encode()  # storable as UTF-8 text


@parser_settings
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".csv"]), csv_header=st.booleans())
def test_arbitrary_bytes_never_raise_and_every_bad_row_has_a_line_and_reason(tmp_path, data, suffix, csv_header):
    if suffix == ".csv" and csv_header:
        data = b"text\n" + data
    path = tmp_path / f"log{suffix}"
    path.write_bytes(data)
    parsed = parse_log_file(path, max_chars=MAX_CHARS, long_prompts="truncate")
    check_invariants(parsed, lines_in_file=len(data.splitlines()) + 1)


# A non-blank line without line breaks, and not starting with a byte-order mark (the first line would name an encoding).
junk_line = st.tuples(st.sampled_from([b"{", b"[", b'"', b"x", b"0", b"\xff", b"\x00"]), st.binary(max_size=40)).map(
    lambda parts: parts[0] + parts[1].replace(b"\n", b"").replace(b"\r", b"")
)
valid_line = st.builds(lambda text: json.dumps({"prompt": text}).encode(), prompt_text)


@parser_settings
@given(lines=st.lists(st.one_of(junk_line, valid_line), max_size=20), long_prompts=st.sampled_from(["skip", "truncate"]))
def test_jsonl_rows_and_bad_rows_add_up_to_the_lines_read(tmp_path, lines, long_prompts):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\n".join(lines))
    parsed = parse_log_file(path, max_chars=MAX_CHARS, long_prompts=long_prompts)
    assert sorted([r.line for r in parsed.rows] + [b.line for b in parsed.bad]) == list(range(1, len(lines) + 1))
    check_invariants(parsed, len(lines))


conversation = st.builds(
    lambda earlier, last: [*earlier, {"role": "user", "content": last}],
    st.lists(st.builds(lambda role, text: {"role": role, "content": text}, st.sampled_from(ROLES), prompt_text), max_size=3),
    prompt_text,
)
encodings = st.sampled_from(
    [
        lambda text: text.encode(),
        lambda text: codecs.BOM_UTF8 + text.encode(),
        lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
        lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
    ]
)


@parser_settings
@given(conversations=st.lists(conversation, min_size=1, max_size=8), ascii_only=st.booleans(), encode=encodings)
def test_valid_jsonl_records_round_trip(tmp_path, conversations, ascii_only, encode):
    text = "\n".join(json.dumps({"messages": c, "label": "never read"}, ensure_ascii=ascii_only) for c in conversations)
    path = tmp_path / "log.jsonl"
    path.write_bytes(encode(text))
    parsed = parse_log_file(path, max_chars=10_000)
    assert parsed.bad == []
    assert [(r.line, r.messages, r.truncated) for r in parsed.rows] == [(i, c, False) for i, c in enumerate(conversations, start=1)]


@parser_settings
@given(prompts=st.lists(prompt_text, min_size=1, max_size=8), encode=encodings)
def test_valid_csv_records_round_trip(tmp_path, prompts, encode):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "text", "label"])
    writer.writerows([i, p, "never read"] for i, p in enumerate(prompts))
    path = tmp_path / "log.csv"
    path.write_bytes(encode(out.getvalue()))
    parsed = parse_log_file(path, max_chars=10_000)
    assert parsed.bad == []
    assert [r.messages for r in parsed.rows] == [[{"role": "user", "content": p}] for p in prompts]


def valid_records() -> list[dict]:
    """One record of each log format, as the libraries that write them write them."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    [gateway] = gateway_log([CONVERSATION])
    spans = otel_spans()
    return [
        gateway,
        {"custom_id": "task-1", "method": "POST", "url": "/v1/chat/completions", "body": gateway["request"]},
        {"messages": [*CONVERSATION, {"role": "assistant", "content": "It shipped."}], "tools": TOOLS},
        *(json.loads(span.to_json()) for span in spans[:2]),
        MessageToDict(encode_spans(spans[:2])),
        langfuse_observation(1, input={"messages": CONVERSATION, "tools": TOOLS}),
    ]


def paths(value, prefix=()):
    """Every place in a JSON value, as the keys and indices that lead to it."""
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from paths(child, (*prefix, key))


def replaced(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), prompt_text, st.sampled_from(["user", "tool", "[", "{"])
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["role", "content", "type", "name", "text"]), inner, max_size=3)
    ),
    max_leaves=12,
)
VALID = valid_records()


@st.composite
def mutated(draw) -> dict:
    """A valid record of some format with one to three of its values, anywhere in it, replaced by any JSON value."""
    record = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 3))):
        record = replaced(record, draw(st.sampled_from(list(paths(record)))), draw(json_values))
    return record


@parser_settings
@given(
    records=st.lists(mutated(), max_size=5),
    log_format=st.sampled_from(get_args(LogFormatName)),
    suffix=st.sampled_from([".jsonl", ".json"]),
)
def test_records_of_any_shape_are_rows_or_quarantined_never_an_error(tmp_path, records, log_format, suffix):
    path = tmp_path / f"log{suffix}"
    path.write_text("\n".join(json.dumps(r) for r in records))
    parsed = parse_log_file(path, max_chars=MAX_CHARS, long_prompts="truncate", log_format=log_format)
    numbers = [r.line for r in parsed.rows] + [b.line for b in parsed.bad]
    assert len(numbers) == len(set(numbers)) and all(b.reason for b in parsed.bad)
    for row in parsed.rows:
        assert any(m["role"] == "user" and m["content"].strip() for m in row.messages)
        json.dumps([row.messages, row.trace.tools, row.trace.reply], ensure_ascii=False).encode()  # storable
