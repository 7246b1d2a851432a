"""Properties of the log parser over generated input: it never raises, every row read is accounted for once,
and what it accepts is what was written."""

import codecs
import csv
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tao_dagster.ingest import ROLES, parse_log_file

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
        assert row.messages[-1]["role"] == "user" and row.messages[-1]["content"].strip()
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
