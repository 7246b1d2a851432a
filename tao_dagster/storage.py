"""Where production log files arrive and where checkpoints and reports are published: a local folder or S3.

S3 goes through a boto3 client made on demand (`s3`, a callable): the Dagster layer passes dagster-aws's
S3Resource.get_client, a notebook `boto3.client("s3")` or nothing for local folders.
"""

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tao_dagster.ingest import log_suffix


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/"); the prefix is "" at the bucket's root."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def s3_client():
    """boto3's S3 client, with endpoint and credentials from the environment."""
    import boto3

    return boto3.client("s3")


def list_objects(client, bucket: str, prefix: str) -> list[dict]:
    return [
        obj for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])
    ]


def partition_key(name: str) -> str:
    """A log file's partition key: its name (or S3 key below the prefix) with anything but letters, digits,
    dot, dash and underscore replaced, since keys appear in URLs, CLI ranges and SQL. A name that had to
    change gets a short hash of the original before its suffix, so two names never share a key."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe == name:
        return name
    tag = hashlib.sha256(name.encode()).hexdigest()[:6]
    # The whole log suffix (`.jsonl.gz`) stays at the end, so the key still names the file's format.
    if log_suffix(safe):
        suffix = safe[-(len(log_suffix(safe)) + 3 * safe.lower().endswith(".gz")) :]
    else:
        suffix = safe[safe.rfind(".") :] if "." in safe else ""
    return f"{safe[: len(safe) - len(suffix)]}-{tag}{suffix}"


@dataclass(frozen=True)
class LogFile:
    """A production log file as the log source lists it."""

    key: str  # its partition key
    name: str  # path or s3:// URL, for messages
    fingerprint: str  # size and mtime (local) or ETag and size (S3): changes when the content does


@dataclass(frozen=True)
class LogSource:
    """A local folder of log files, or `s3://bucket/prefix`; `cache` holds local copies of S3 objects."""

    location: str
    cache: Path
    s3: Callable | None = None

    def list_files(self) -> dict[str, LogFile]:
        """Partition key -> log file, for every file with a log suffix (sub-folders of a local folder are not read)."""
        files = self._list_s3() if self.location.startswith("s3://") else self._list_folder()
        return {partition_key(name): LogFile(partition_key(name), where, fingerprint) for name, where, fingerprint in files}

    def _list_folder(self) -> list[tuple[str, str, str]]:
        folder = Path(self.location)
        if not folder.is_dir():
            raise FileNotFoundError(f"log location {folder} is not a readable folder: create it, or set TAO_LOGS or the logs resource")
        listed = []
        for path in sorted(folder.iterdir()):
            if log_suffix(path.name) and path.is_file():
                stat = path.stat()
                listed.append((path.name, str(path), f"{stat.st_size}:{stat.st_mtime_ns}"))
        return listed

    def _list_s3(self) -> list[tuple[str, str, str]]:
        bucket, prefix = split_s3_url(self.location)
        try:
            objects = list_objects(self.s3(), bucket, prefix)
        except Exception as err:
            raise RuntimeError(f"log location {self.location} could not be listed: {err}") from err
        listed = []
        for obj in objects:
            name, etag = obj["Key"].removeprefix(prefix), obj["ETag"].strip('"')
            if log_suffix(name):
                listed.append((name, f"s3://{bucket}/{obj['Key']}", f"{etag}:{obj['Size']}"))
        return listed

    def fetch(self, key: str, listed: dict[str, LogFile]) -> tuple[Path, str]:
        """A local copy of the partition's file and its fingerprint, given one `list_files()` for the whole run.
        A file gone since it was listed gives a path that does not exist, which ingestion quarantines like
        any unreadable file."""
        found = listed.get(key)
        if found is None:
            return Path(self.location) / key, ""
        if not found.name.startswith("s3://"):
            return Path(found.name), found.fingerprint
        bucket, _, object_key = found.name.removeprefix("s3://").partition("/")
        local = self.cache / key
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.s3().download_file(bucket, object_key, str(local))
        except Exception:  # deleted since it was listed: quarantined as unreadable
            local.unlink(missing_ok=True)
        return local, found.fingerprint


@dataclass(frozen=True)
class ArtifactStore:
    """Where checkpoints and reports are published besides the project home: nowhere more ("", the laptop),
    or `s3://bucket/prefix`, so that they outlive the pod that wrote them."""

    location: str = ""
    s3: Callable | None = None

    def publish(self, folder: Path, kind: str) -> str | None:
        """Copy `folder` to <location>/<kind>/<folder name>/, skipping objects already there with the same content
        (a rerun or a reused checkpoint uploads nothing, a changed file of the same size is uploaded again); its
        URI, or None without a location. Content is compared by SHA-256, which each upload stores in the object's
        metadata: an S3 ETag is the MD5 of the bytes only for an object uploaded in one part."""
        if not self.location:
            return None
        bucket, prefix = split_s3_url(self.location)
        base = f"{prefix}{kind}/{folder.name}"
        client = self.s3()
        stored = {obj["Key"] for obj in list_objects(client, bucket, f"{base}/")}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key, digest = f"{base}/{path.relative_to(folder).as_posix()}", sha256_of(path)
            if key not in stored or client.head_object(Bucket=bucket, Key=key)["Metadata"].get(CHECKSUM) != digest:
                client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {CHECKSUM: digest}})
        return f"s3://{bucket}/{base}"


CHECKSUM = "sha256"  # the object metadata key (x-amz-meta-sha256) of a published file's checksum


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, data: str | bytes) -> Path:
    """Write `path` so that a reader, or a rerun after a kill, finds the old file or the whole new one, never part
    of one: a temporary name beside it, fsync, rename, and the folder fsynced so that the rename survives too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: Path) -> None:
    """Make the folder's entries (a file just renamed into it, say) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, before a rename makes it visible as complete."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        fsync_folder(sub)
    fsync_folder(folder)
