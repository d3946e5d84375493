"""The local side of an upload: the files under a folder, their sizes and MD5s, ``manifest.json``."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .client import explain
from .errors import StorageError, error_code
from .location import S3Location

MANIFEST_NAME = "manifest.json"


@dataclasses.dataclass
class FileEntry:
    path: str  # relative, POSIX separators
    size: int
    md5: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "md5": self.md5}


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class LocalFile:
    path: str  # relative, POSIX separators
    full: str
    size: int


def list_files(src: str | os.PathLike) -> list[LocalFile]:
    """Regular files under ``src`` with their sizes, sorted, skipping hidden files and folders and
    ``manifest.json`` (``os.scandir``: one directory read, no extra stat per file)."""
    root = Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"Upload source {root} is not a folder")
    found: list[LocalFile] = []

    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                walk(entry.path, f"{prefix}{entry.name}/")
            elif entry.is_file() and entry.name != MANIFEST_NAME:
                found.append(LocalFile(f"{prefix}{entry.name}", entry.path, entry.stat().st_size))

    walk(str(root), "")
    return found


def build_manifest(src: str | os.PathLike, workers: int = 2, files: list[LocalFile] | None = None) -> list[FileEntry]:
    """Size and MD5 of every file under ``src`` (MD5 is S3's ETag for single-part objects)."""
    files = list_files(src) if files is None else files

    def chunk(part: list[LocalFile]) -> list[FileEntry]:
        out = []
        for f in part:
            with open(f.full, "rb") as fh:  # image files are small: one read each
                data = fh.read()
            out.append(FileEntry(f.path, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest()))
        return out

    # a few large tasks: per-file futures cost more than the hashing of a 20 kB JPEG
    step = max(64, len(files) // (workers * 4) + 1)
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        return [e for part in pool.map(chunk, [files[i:i + step] for i in range(0, len(files), step)]) for e in part]


def manifest_document(entries: list[FileEntry], source: str, location: S3Location) -> dict[str, Any]:
    return {
        "version": 1,
        "source": source,
        "location": location.uri,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": len(entries),
        "bytes": sum(e.size for e in entries),
        "checksum": "md5",
        "entries": [e.to_dict() for e in entries],
    }


def read_manifest(client, location: S3Location) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=location.bucket, Key=location.key(MANIFEST_NAME))["Body"].read()
    except ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404"):
            raise StorageError(f"{location.uri} has no {MANIFEST_NAME}; upload the folder first") from exc
        raise explain(exc, location.uri) from exc
    return json.loads(body)
