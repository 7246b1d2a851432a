"""A file read in many small batches and chunks gives exactly what the whole file read at once gives: the same
rows, bad rows, line numbers and counts, with records, line breaks, characters, gzip members and CSV fields cut at
chunk and batch boundaries; duplicates are counted across batches and partitions."""

import codecs
import gzip
import json
import random

import pytest

from tao_dagster.domain import DomainSettings
from tao_dagster.ingest import parse_log_file
from tao_dagster.pipeline.prompts import ingest_partition, reconciles
from tao_dagster.records import count_records
from tao_dagster.traces import files
from tao_dagster.traces.files import LINE_BREAK, Item, Numbering
from tao_dagster.warehouse import Warehouse

from .conftest import BANKING


@pytest.fixture
def tiny_chunks(monkeypatch):
    """gzip read 5 bytes at a time: members, characters and line breaks are cut between chunks."""
    monkeypatch.setattr(files, "CHUNK_BYTES", 5)


def log_lines(count: int) -> list[str]:
    """JSON Lines with a bad line, a blank line and a non-ASCII character now and then."""
    rng, lines = random.Random(0), []
    for n in range(count):
        kind = rng.random()
        if kind < 0.1:
            lines.append('{"prompt": "broken')
        elif kind < 0.15:
            lines.append("  ")
        elif kind < 0.2:
            lines.append(json.dumps({"other": n}))
        else:
            lines.append(json.dumps({"prompt": f"question {n} caf\u00e9 \u20ac{'x' * rng.randint(0, 40)}"}, ensure_ascii=False))
    return lines


def joined(lines: list[str], seed: int = 1) -> str:
    rng = random.Random(seed)
    return "".join(line + rng.choice(["\n", "\r\n", "\r"]) for line in lines)


def expected_bad_lines(text: str) -> list[int]:
    """Line numbers of the bad records, found by splitting the whole text as the line breaks are defined."""
    return [n for n, line in enumerate(LINE_BREAK.split(text), start=1) if line.strip() and not line.startswith('{"prompt": "q')]


def summary(parsed) -> tuple:
    return (
        [(r.line, r.messages) for r in parsed.rows],
        [(b.line, b.reason, b.raw) for b in parsed.bad],
        parsed.skipped,
        parsed.log_format,
    )


@pytest.mark.parametrize(
    ("name", "encode"),
    [
        ("a.jsonl", str.encode),
        ("a.jsonl.gz", lambda text: gzip.compress(text.encode())),
        (
            "two-members.jsonl.gz",
            lambda text: gzip.compress(text[: len(text) // 3].encode()) + gzip.compress(text[len(text) // 3 :].encode()),
        ),
        ("utf16.jsonl", lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le")),
        ("utf16.jsonl.gz", lambda text: gzip.compress(codecs.BOM_UTF16_BE + text.encode("utf-16-be"))),
    ],
)
def test_many_batches_and_chunks_give_what_one_batch_gives(tmp_path, tiny_chunks, name, encode):
    text = joined(log_lines(3000))  # over 100 KB: the text stream's own 8 KB chunks cut it too
    path = tmp_path / name
    path.write_bytes(encode(text))
    whole, streamed = parse_log_file(path, batch_size=10**6), parse_log_file(path, batch_size=7)
    assert summary(streamed) == summary(whole)
    assert [b.line for b in streamed.bad] == expected_bad_lines(text)
    assert len(streamed.rows) > 2000


def test_a_crlf_and_a_bad_row_straddling_a_chunk_boundary(tmp_path):
    """The text stream decodes 8192 bytes at a time: a \r ends one chunk and its \n starts the next, or a bad
    record runs from one chunk into the next."""
    first = '{"prompt": "' + "a" * (8191 - 14) + '"}'
    crlf = first + "\r\n" + json.dumps({"prompt": "next"}) + "\r\n"
    bad_across = json.dumps({"prompt": "a" * (8180 - 16)}) + "\n" + '{"prompt": "broken\n' + json.dumps({"prompt": "last"}) + "\n"
    assert crlf.index("\r") == 8191 and bad_across.index("broken") < 8192 < bad_across.index("last")
    for text, good, bad in ((crlf, [1, 2], []), (bad_across, [1, 3], [2])):
        path = tmp_path / "a.jsonl"
        path.write_text(text, newline="")
        for batch_size in (1, 2, 100):
            parsed = parse_log_file(path, max_chars=10**5, batch_size=batch_size)
            assert [r.line for r in parsed.rows] == good and [b.line for b in parsed.bad] == bad
            assert all(b.reason.startswith("malformed JSON") for b in parsed.bad)
        assert count_records(path, "messages") == len(good) + len(bad)


def test_a_gzip_file_cut_short_streams_its_whole_records(tmp_path, tiny_chunks):
    lines = [json.dumps({"prompt": f"question {n}"}) for n in range(500)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    parsed = parse_log_file(path, batch_size=3)
    kept = len(parsed.rows)
    assert 0 < kept < 500 and [r.line for r in parsed.rows] == list(range(1, kept + 1))
    assert [b.line for b in parsed.bad] in ([], [kept + 1])  # the last line, if it was cut inside a record
    assert all("cut short" in b.reason for b in parsed.bad)


def test_a_multi_line_csv_field_across_a_chunk_boundary(tmp_path):
    rows = [f'{n},"question {n} {"x" * 30}"\n' for n in range(400)]
    split = 150
    before = len("id,text\n") + sum(map(len, rows[: split - 1]))
    rows[split - 1] = f'{split - 1},"{"y" * (8180 - before - 6)}"\n'  # the next row starts at character 8180
    rows[split] = f'{split},"a question\nover\r\nthree lines"\n'
    text = "id,text\n" + "".join(rows)
    assert text.index('"a question') < 8192 < text.index('three lines"')
    path = tmp_path / "a.csv"
    path.write_text(text, newline="")
    whole, streamed = parse_log_file(path, batch_size=10**6), parse_log_file(path, batch_size=3)
    assert summary(streamed) == summary(whole) and streamed.bad == []
    [row] = [r for r in streamed.rows if "over" in r.messages[0]["content"]]
    assert row.line == split + 4 and row.messages[0]["content"] == "a question\nover\r\nthree lines"  # the line it ends on
    assert streamed.rows[-1].line == 403 and count_records(path, "csv") == len(streamed.rows) == 400


def test_records_of_several_a_line_are_numbered_uniquely_across_batches():
    """A line of several records in a later batch: numbered on from the highest number given before."""
    numbering = Numbering()
    first = numbering([Item(1, "a"), Item(4, "b")])
    later = numbering([Item(5, "c"), Item(5, "d"), Item(6, "e")])
    last = numbering([Item(7, "f"), Item(8, "g")])  # one record a line again: still by place
    assert [item.number for item in first + later + last] == [1, 4, 5, 6, 7, 8, 9]
    assert [item.number for item in Numbering()([Item(1, "a"), Item(4, "b"), Item(5, "c"), Item(5, "d")])] == [1, 2, 3, 4]


class NoWindow:
    """Every prompt fits: these tests are about counting."""

    def apply(self, parsed, long_prompts):
        pass


def test_duplicates_are_counted_across_batches_and_partitions(tmp_path):
    def write(name: str, prompts: list[str]) -> None:
        (tmp_path / name).write_text("".join(json.dumps({"prompt": p}) + "\n" if p else "{broken\n" for p in prompts))

    write("a.jsonl", ["one", "two", "", "one", "three", "two ", "one"])  # "two " hashes like "two"
    write("b.jsonl", ["two", "four", "four", "", "one", "five"])
    domain = DomainSettings(domain_file=str(BANKING / "domain.yaml"))
    counted = ("accepted", "duplicates", "quarantined")
    for batch_size in (1, 2, 100):
        db = Warehouse(tmp_path / f"wh-{batch_size}.duckdb")
        a = ingest_partition(db, "a", tmp_path / "a.jsonl", domain, NoWindow(), batch_size=batch_size)
        b = ingest_partition(db, "b", tmp_path / "b.jsonl", domain, NoWindow(), batch_size=batch_size)
        assert [[c[k] for k in counted] for c in (a, b)] == [[3, 3, 1], [2, 3, 1]] and reconciles(a) and reconciles(b)
        again = ingest_partition(db, "a", tmp_path / "a.jsonl", domain, NoWindow(), batch_size=batch_size)
        assert [again[k] for k in counted] == [3, 3, 1], "a partition ingested again keeps its own prompts"
        flags = db.query("select partition, line, duplicate from prompt_sources order by partition, line").rows()
        assert flags == [
            *[("a", n, dup) for n, dup in [(1, False), (2, False), (4, True), (5, False), (6, True), (7, True)]],
            *[("b", n, dup) for n, dup in [(1, True), (2, False), (3, True), (5, True), (6, False)]],
        ]
        assert db.query("select count(*) as n from prompts")["n"][0] == 5
