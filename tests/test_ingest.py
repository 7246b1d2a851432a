import json

from tao_dagster.ingest import is_heldout, parse_log_file, prompt_id


def write(tmp_path, name, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_jsonl_chat_and_prompt_lines(tmp_path):
    lines = [
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my card?"}]}),
        json.dumps({"prompt": "How do I top up?", "category": "top_up"}),
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}),
    ]
    parsed = parse_log_file(write(tmp_path, "log.jsonl", "\n".join(lines)))
    assert [r.line for r in parsed.rows] == [1, 2, 3]
    assert parsed.rows[0].messages[0] == {"role": "system", "content": "Be brief."}
    # Other fields (a label, here) never leave the parser.
    assert parsed.rows[1].messages == [{"role": "user", "content": "How do I top up?"}]
    # A logged answer is not part of the prompt.
    assert parsed.rows[2].messages == [{"role": "user", "content": "Hi"}]
    assert parsed.bad == []


def test_bad_jsonl_rows_are_kept_with_line_and_reason(tmp_path):
    content = b"\n".join(
        [
            json.dumps({"prompt": "good one"}).encode(),
            b"{not json",
            json.dumps({"prompt": "   "}).encode(),
            json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(),
            b"\xff\xfe binary",
            json.dumps({"text": "no prompt key"}).encode(),
            json.dumps({"prompt": "x" * 50}).encode(),
            json.dumps({"prompt": "good two"}).encode(),
        ]
    )
    parsed = parse_log_file(write(tmp_path, "log.jsonl", content), max_chars=40)
    assert [r.line for r in parsed.rows] == [1, 8]
    reasons = {b.line: b.reason for b in parsed.bad}
    assert reasons[2].startswith("malformed JSON")
    assert reasons[3] == "empty prompt"
    assert "unknown message role 'wizard'" in reasons[4]
    assert "UTF-8" in reasons[5]
    assert "neither" in reasons[6]
    assert "over the limit of 40" in reasons[7]
    assert parsed.rows_read == 8


def test_csv_with_quoted_commas(tmp_path):
    path = write(tmp_path, "log.csv", 'text,other\n"Hello, is my card lost?",1\n"",2\nPlain one,3\n')
    parsed = parse_log_file(path)
    assert [r.messages[0]["content"] for r in parsed.rows] == ["Hello, is my card lost?", "Plain one"]
    assert [(b.line, b.reason) for b in parsed.bad] == [(3, "empty prompt")]


def test_file_level_problems_are_one_bad_row_at_line_0(tmp_path):
    no_column = parse_log_file(write(tmp_path, "log.csv", "question\nhi\n"))
    assert no_column.rows == [] and [(b.line, b.reason) for b in no_column.bad] == [(0, "CSV has no column 'text' (columns: ['question'])")]
    gone = parse_log_file(tmp_path / "vanished.jsonl")  # listed, then removed before it was read
    assert gone.rows == [] and gone.bad[0].line == 0 and gone.bad[0].reason.startswith("file could not be read")
    empty = parse_log_file(write(tmp_path, "empty.jsonl", b""))
    assert empty.rows == [] and empty.bad == [] and empty.rows_read == 0


def test_prompt_id_ignores_whitespace_but_not_content():
    a = prompt_id([{"role": "user", "content": "Where is  my card?\n"}])
    assert a == prompt_id([{"role": "user", "content": " Where is my card?"}])
    assert a != prompt_id([{"role": "user", "content": "Where is my cash?"}])
    assert a != prompt_id([{"role": "system", "content": "x"}, {"role": "user", "content": "Where is my card?"}])


def test_heldout_slice_is_deterministic_and_near_its_fraction():
    ids = [prompt_id([{"role": "user", "content": f"question {i}"}]) for i in range(4000)]
    share = sum(is_heldout(i, 0.3) for i in ids) / len(ids)
    assert 0.27 < share < 0.33
    assert [is_heldout(i, 0.3) for i in ids[:50]] == [is_heldout(i, 0.3) for i in ids[:50]]
    assert not any(is_heldout(i, 0.0) for i in ids)
