"""The endpoint's traffic as log files the sensor ingests: one chat-completions exchange per line, in rotated files.

A line is `{"request_id", "timestamp" (ISO-8601 UTC, when the request arrived), "request" (the body as received),
"response" (the ChatCompletion returned)}`; no header is written, so no credential is. The file being written is
`<name>.jsonl.part`, which no log listing reads; when it is big or old enough it is renamed to `<name>.jsonl`
(a rename within a folder is atomic: the sensor sees a file whole or not at all). For an S3 location the
files are written to a local spool and uploaded once closed (an object appears whole); a failed upload is
retried at the next rotation.
"""

import json
import logging
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

from tao_dagster.storage import LogSource, split_s3_url

log = logging.getLogger(__name__)
PART = ".part"


def utc_timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def exchange(request_id: str, received: float, request: dict, response: dict) -> dict:
    """One log line: the request as received and the response as returned."""
    return {"request_id": request_id, "timestamp": utc_timestamp(received), "request": request, "response": response}


class TraceLog:
    def __init__(self, logs: LogSource, spool: Path, rotate_bytes: int, rotate_seconds: float):
        self.s3 = logs.s3 if logs.location.startswith("s3://") else None
        self.location = logs.location
        self.folder = spool if self.s3 else Path(logs.location)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rotate_bytes, self.rotate_seconds = rotate_bytes, rotate_seconds
        self.tag = secrets.token_hex(3)  # servers sharing a location never write the same name
        self.file, self.path, self.opened_at, self.lines, self.closed = None, None, 0.0, 0, 0

    def write(self, record: dict) -> None:
        if self.file is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            self.closed += 1
            self.path = self.folder / f"serve-{stamp}-{self.tag}-{self.closed:04d}.jsonl{PART}"
            self.file, self.opened_at, self.lines = self.path.open("w", encoding="utf-8"), time.monotonic(), 0
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()  # a killed server leaves its lines in the .part file
        self.lines += 1
        if self.file.tell() >= self.rotate_bytes:
            self.rotate()

    def rotate_if_old(self) -> None:
        if self.file is not None and time.monotonic() - self.opened_at >= self.rotate_seconds:
            self.rotate()

    def rotate(self) -> None:
        """Close the open file, if any, and hand it to the sensor."""
        if self.file is None:
            return
        self.file.close()
        done = self.path.with_name(self.path.name.removesuffix(PART))
        self.path.replace(done)
        log.info("log file %s closed with %d requests", done.name if self.s3 else done, self.lines)
        self.file = self.path = None
        if self.s3:
            self.upload()

    def upload(self) -> None:
        bucket, prefix = split_s3_url(self.location)
        client = self.s3()
        for path in sorted(self.folder.glob("*.jsonl")):
            try:
                client.upload_file(str(path), bucket, f"{prefix}{path.name}")
            except Exception as err:  # kept in the spool for the next rotation
                log.error("uploading %s to %s failed (%s): kept in %s for the next rotation", path.name, self.location, err, self.folder)
                return
            path.unlink()
