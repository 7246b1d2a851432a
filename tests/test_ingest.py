import codecs
import gzip
import json

import pytest

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
    (tmp_path / "folder.jsonl").mkdir()
    folder = parse_log_file(tmp_path / "folder.jsonl")
    assert [(b.line, b.reason) for b in folder.bad] == [(0, "file could not be read: Is a directory")]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", b""),
        ("blank.jsonl", b"\n  \n\t\n"),
        ("bom_only.jsonl", codecs.BOM_UTF8),
        ("empty.csv", b""),
        ("header_only.csv", b"text\n"),
    ],
)
def test_an_empty_file_has_no_rows_and_nothing_to_quarantine(tmp_path, name, content):
    parsed = parse_log_file(write(tmp_path, name, content))
    assert parsed.rows == [] and parsed.bad == [] and parsed.rows_read == 0


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: text.encode(),
        lambda text: codecs.BOM_UTF8 + text.encode(),
        lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
        lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
        lambda text: codecs.BOM_UTF32_LE + text.encode("utf-32-le"),
    ],
    ids=["utf-8", "utf-8-bom", "utf-16-le", "utf-16-be", "utf-32-le"],
)
def test_a_byte_order_mark_selects_the_encoding(tmp_path, encode):
    jsonl = parse_log_file(write(tmp_path, "log.jsonl", encode('{"prompt": "Où est ma carte ?"}\n{"prompt": "¿Dónde está?"}\n')))
    csv = parse_log_file(write(tmp_path, "log.csv", encode("id,text\n1,Où est ma carte ?\n2,¿Dónde está?\n")))
    for parsed in (jsonl, csv):
        assert parsed.bad == []
        assert [r.messages[0]["content"] for r in parsed.rows] == ["Où est ma carte ?", "¿Dónde está?"]


def test_undecodable_rows_are_quarantined_alone(tmp_path):
    latin1 = '{"prompt": "café"}'.encode("latin-1")
    parsed = parse_log_file(write(tmp_path, "log.jsonl", b'{"prompt": "first"}\n' + latin1 + b'\n{"prompt": "third"}\n'))
    assert [r.line for r in parsed.rows] == [1, 3]
    assert [(b.line, b.reason, b.raw) for b in parsed.bad] == [(2, "line is not valid UTF-8", '{"prompt": "caf\\xe9"}')]

    lone_surrogate = b"\x00\xd8"  # a UTF-16 code unit that starts a pair which never comes
    utf16 = codecs.BOM_UTF16_LE + '{"prompt": "one"}\n'.encode("utf-16-le") + lone_surrogate + '{"prompt": "two"}\n'.encode("utf-16-le")
    parsed = parse_log_file(write(tmp_path, "utf16.jsonl", utf16))
    assert [r.messages[0]["content"] for r in parsed.rows] == ["one"]
    assert [(b.line, b.reason) for b in parsed.bad] == [(2, "line is not valid UTF-16")]

    parsed = parse_log_file(write(tmp_path, "log.csv", b"text\nfirst\ncaf\xe9\nthird\n"))
    assert [r.line for r in parsed.rows] == [2, 4]
    assert [(b.line, b.reason, b.raw) for b in parsed.bad] == [(3, "text is not valid UTF-8", "caf\\xe9")]


def test_truncated_last_line(tmp_path):
    cut_json = parse_log_file(write(tmp_path, "a.jsonl", b'{"prompt": "whole"}\n{"prompt": "cut sh'))
    cut_char = parse_log_file(write(tmp_path, "b.jsonl", b'{"prompt": "whole"}\n{"prompt": "caf' + "é".encode()[:1]))
    for parsed, reason in ((cut_json, "malformed JSON"), (cut_char, "line is not valid UTF-8")):
        assert [r.line for r in parsed.rows] == [1]
        [bad] = parsed.bad
        assert bad.line == 2 and bad.reason.startswith(reason) and bad.reason.endswith("the file may have been cut short)")
    # A complete last line without its newline is fine.
    assert parse_log_file(write(tmp_path, "c.jsonl", b'{"prompt": "whole"}\n{"prompt": "last"}')).bad == []
    cut_csv = parse_log_file(write(tmp_path, "d.csv", b'text\nwhole\n"cut sh'))
    assert [r.line for r in cut_csv.rows] == [2] and [(b.line, b.reason) for b in cut_csv.bad] == [
        (3, "malformed CSV: unexpected end of data")
    ]


def test_binary_junk_and_control_characters_never_become_prompts(tmp_path):
    gzipped = parse_log_file(write(tmp_path, "log.jsonl", gzip.compress(b'{"prompt": "hi"}\n' * 200)))
    assert gzipped.rows == [] and gzipped.bad and all(b.line >= 1 and b.reason for b in gzipped.bad)
    lines = [
        b'{"prompt": "nul \x00 byte"}',  # raw control characters are not allowed in JSON strings
        json.dumps({"prompt": "escaped \x00 nul"}).encode(),
        json.dumps({"prompt": "bell \x07"}).encode(),
        b'{"prompt": "lone surrogate \\ud800"}',  # valid JSON, not valid Unicode: the warehouse could not store it
        b"[" * 100_000,
        json.dumps({"prompt": "tab\tand\r\nnewlines are text"}).encode(),
    ]
    parsed = parse_log_file(write(tmp_path, "junk.jsonl", b"\n".join(lines)))
    assert [r.line for r in parsed.rows] == [6]
    assert [(b.line, b.reason.split(":")[0]) for b in parsed.bad] == [
        (1, "malformed JSON"),
        (2, "text contains control characters (binary data?)"),
        (3, "text contains control characters (binary data?)"),
        (4, "text has an unpaired surrogate escape (not valid Unicode)"),
        (5, "JSON nested too deeply"),
    ]
    csv = parse_log_file(write(tmp_path, "junk.csv", b"text\nok\n\x01\x02\x03\n"))
    assert [r.line for r in csv.rows] == [2] and [(b.line, b.reason) for b in csv.bad] == [
        (3, "text contains control characters (binary data?)")
    ]


def test_malformed_csv_rows_are_quarantined_and_reading_goes_on(tmp_path):
    content = b'id,text\n1,"quoted"junk\n2,fine\n3\n4,"  "\n\n5,"multi\nline"\n'
    parsed = parse_log_file(write(tmp_path, "log.csv", content))
    assert [(r.line, r.messages[0]["content"]) for r in parsed.rows] == [(3, "fine"), (8, "multi\nline")]
    assert [(b.line, b.reason) for b in parsed.bad] == [
        (2, "malformed CSV: ',' expected after '\"'"),
        (4, "empty prompt"),  # a short row: no text field
        (5, "empty prompt"),
    ]


def test_long_prompts_are_skipped_or_truncated(tmp_path):
    system = {"role": "system", "content": "s" * 30}
    lines = [
        json.dumps({"prompt": "p" * 500}),
        json.dumps({"messages": [system, {"role": "user", "content": "u" * 30}]}),
        json.dumps({"messages": [{**system, "content": "s" * 50}, {"role": "user", "content": "u"}]}),
        json.dumps({"prompt": "short"}),
    ]
    path = write(tmp_path, "log.jsonl", "\n".join(lines))
    skipped = parse_log_file(path, max_chars=40)
    assert [r.line for r in skipped.rows] == [4]
    assert [(b.line, b.reason) for b in skipped.bad] == [
        (1, "prompt has 500 characters, over the limit of 40"),
        (2, "prompt has 60 characters, over the limit of 40"),
        (3, "prompt has 51 characters, over the limit of 40"),
    ]
    truncated = parse_log_file(path, max_chars=40, long_prompts="truncate")
    assert [(r.line, r.truncated) for r in truncated.rows] == [(1, True), (2, True), (4, False)]
    assert truncated.rows[0].messages == [{"role": "user", "content": "p" * 40}]
    assert truncated.rows[1].messages == [system, {"role": "user", "content": "u" * 10}]  # the earlier turns are kept whole
    assert [(b.line, b.reason) for b in truncated.bad] == [
        (3, "earlier turns leave no room for the prompt within the limit of 40 characters")
    ]
    huge_csv = parse_log_file(write(tmp_path, "log.csv", b"text\n" + b"x" * 200_000 + b"\nok\n"), long_prompts="truncate")
    assert [(len(r.messages[0]["content"]), r.truncated) for r in huge_csv.rows] == [(4000, True), (2, False)]
    with pytest.raises(ValueError, match="long_prompts must be one of"):
        parse_log_file(path, long_prompts="drop")


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
