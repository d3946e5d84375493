"""Shards: deterministic tar files of about ``shard_mb`` MB (WebDataset names), built in Python and sent
by boto3, or built by GNU tar and sent by s5cmd."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .checksums import METADATA_KEY
from .client import explain, list_objects
from .errors import StorageError
from .location import S3Location
from .manifest import FileEntry, LocalFile, build_manifest
from .progress import _NoBar
from .s5cmd import _run_s5cmd


def _shard_name(index: int, stem: str = "data") -> str:
    return f"{stem}-{index:06d}.tar"


def _named_shards(files: list[tuple[str, int]], shard_bytes: int) -> tuple[list[list[tuple[str, int]]], list[str]]:
    """The shard plan and its WebDataset names (``train-…`` for a seg_train-only folder, else ``data-…``)."""
    groups = plan_shards(files, shard_bytes)
    stem = "train" if all(p.startswith("seg_train/") for p, _ in files) else "data"
    return groups, [_shard_name(i, stem) for i in range(len(groups))]


def plan_shards(files: list[tuple[str, int]], shard_bytes: int) -> list[list[tuple[str, int]]]:
    """``(path, size)`` in manifest order, cut into consecutive groups of about ``shard_bytes``."""
    shards: list[list[tuple[str, int]]] = [[]]
    size = 0
    for path, nbytes in files:
        if shards[-1] and size + nbytes + 1024 > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((path, nbytes))
        size += nbytes + 1024  # each tar member has a 512-byte header and padding
    return [s for s in shards if s]


def build_shard(root: Path, paths: list[str]) -> tuple[bytes, list[FileEntry]]:
    """A deterministic tar (same files, same bytes: fixed order, mtime, owner, mode) and the
    manifest entries of its files, each file read once.

    Headers come from ``tarfile.TarInfo.tobuf`` (a standard ustar/pax archive that ``tarfile``
    and ``tar`` read), assembled by hand: ``TarFile.addfile`` copies every member through a
    file object and costs more than reading the files.
    """
    import tarfile

    parts: list[bytes] = []
    entries: list[FileEntry] = []
    for path in paths:
        data = (root / path).read_bytes()
        entries.append(FileEntry(path, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest()))
        info = tarfile.TarInfo(path)
        info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
        info.uname = info.gname = ""
        parts.append(info.tobuf(tarfile.PAX_FORMAT if len(path) >= 100 else tarfile.USTAR_FORMAT, "utf-8",
                                "surrogateescape"))
        parts.append(data)
        pad = -len(data) % tarfile.BLOCKSIZE
        if pad:
            parts.append(b"\0" * pad)
    body = b"".join(parts)
    end = tarfile.BLOCKSIZE * 2
    total = len(body) + end
    total += -total % tarfile.RECORDSIZE  # tar pads the archive to whole records, as tarfile does
    return body + b"\0" * (total - len(body)), entries


def _upload_shards(client, root: Path, location: S3Location, files: list[tuple[str, int]], shard_bytes: int,
                   workers: int, existing: dict[str, tuple[int, str]], bar
                   ) -> tuple[list[dict[str, Any]], list[FileEntry], int]:
    """Build and PUT the shards not already there; returns (shards, file entries, bytes sent)."""
    from botocore.exceptions import BotoCoreError, ClientError

    groups, names = _named_shards(files, shard_bytes)

    def one(item: tuple[str, list[tuple[str, int]]]) -> tuple[dict[str, Any], list[FileEntry], int]:
        name, members = item
        body, entries = build_shard(root, [p for p, _ in members])
        md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
        meta = {"name": name, "size": len(body), "md5": md5, "files": len(entries), "paths": [e.path for e in entries]}
        if existing.get(location.key(name)) == (len(body), md5):
            return meta, entries, 0
        try:
            client.put_object(Bucket=location.bucket, Key=location.key(name), Body=body,
                              ContentType="application/x-tar", ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode(),
                              Metadata={METADATA_KEY: md5})
        except (ClientError, BotoCoreError) as exc:
            raise explain(exc, location.key(name)) from exc
        return meta, entries, len(body)

    shards: list[dict[str, Any]] = []
    all_entries: list[FileEntry] = []
    sent = 0
    with cf.ThreadPoolExecutor(max_workers=max(1, min(workers, 8))) as pool:
        for meta, entries, nbytes in pool.map(one, zip(names, groups)):
            shards.append(meta)
            all_entries += entries
            sent += nbytes
            bar.update(len(entries))
    return shards, all_entries, sent


def gnu_tar() -> str | None:
    """GNU tar, if installed (it writes the same bytes for the same files with the options below)."""
    found = shutil.which("tar")
    if not found:
        return None
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return found if "GNU tar" in out else None


def files_of(root: Path, files: list[tuple[str, int]]) -> list[LocalFile]:
    return [LocalFile(p, str(root / p), n) for p, n in files]


def _tar_shard(tar: str, root: Path, scratch: Path, item: tuple[str, list[tuple[str, int]]]) -> dict[str, Any]:
    """One shard written by GNU tar with deterministic options (same files, same bytes)."""
    name, members = item
    listing = scratch / f".{name}.list"
    listing.write_bytes(b"\0".join(p.encode() for p, _ in members) + b"\0")
    proc = subprocess.run([tar, "--format=gnu", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner",
                           "--mode=u=rw,go=r", "--no-recursion", "--dereference", "--hard-dereference", "-C", str(root),
                           "-cf", str(scratch / name), "--null", "-T", str(listing)], capture_output=True, text=True)
    listing.unlink()
    if proc.returncode != 0:
        raise StorageError(f"tar failed for {name}: {proc.stderr.strip()[-300:]}")
    return {"name": name, "size": (scratch / name).stat().st_size, "files": len(members),
            "paths": [p for p, _ in members]}


def _hash_shard(root: Path, scratch: Path, simple_headers: bool, meta: dict[str, Any], members: list[tuple[str, int]],
                whole: bool = True) -> list[FileEntry]:
    """Each member's MD5 read from the shard's bytes (no second pass over the files), and the
    shard's own MD5 when ``whole`` (a fresh upload takes it from the server's ETag instead)."""
    import mmap

    with open(scratch / meta["name"], "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        view = memoryview(buf)
        if whole:
            meta["md5"] = hashlib.md5(view, usedforsecurity=False).hexdigest()
        entries, offset = [], 0
        if simple_headers:
            for path, size in members:
                digest = hashlib.md5(view[offset + 512: offset + 512 + size], usedforsecurity=False).hexdigest()
                entries.append(FileEntry(path, size, digest))
                offset += 512 + size + (-size % 512)
        view.release()
    return entries if simple_headers else build_manifest(root, files=files_of(root, members))


def _shards_with_tools(client, root: Path, location: S3Location, files: list[tuple[str, int]], shard_bytes: int,
                       existing: dict[str, tuple[int, str]], bar, fresh_ok: bool = True
                       ) -> tuple[list[dict[str, Any]], list[FileEntry], int]:
    """Shards built by GNU tar (C, deterministic options) into a scratch folder and sent by s5cmd,
    while the files are hashed for the manifest: the fastest path, used where both tools exist.

    Into an empty prefix each shard is handed to a running ``s5cmd run`` as soon as tar has
    written it; otherwise the shards already there (same size and MD5) are skipped.
    """
    import queue

    tar = gnu_tar()
    groups, names = _named_shards(files, shard_bytes)
    part_mb = max(64, int(shard_bytes / 1024 / 1024) + 16)  # one part per shard: the ETag stays the MD5
    scratch = Path(tempfile.mkdtemp(prefix="cloudalliance-shards-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    # into an empty prefix the shard's MD5 is taken from its ETag after the upload: only where ETags are MD5s
    fresh = fresh_ok and not any(location.key(n) in existing for n in names)

    def command(name: str, md5: str = "") -> str:
        meta = f"--metadata {METADATA_KEY}={md5} " if md5 else ""
        return (f'cp --raw -p {part_mb} --content-type application/x-tar {meta}"{scratch / name}" '
                f'"s3://{location.bucket}/{location.key(name)}"')

    build = functools.partial(_tar_shard, tar, root, scratch)
    simple_headers = all(len(p.encode()) < 100 for p, _ in files)  # one 512-byte header per member
    hash_shard = functools.partial(_hash_shard, root, scratch, simple_headers)

    try:
        with cf.ThreadPoolExecutor(max_workers=3) as pool:
            if fresh:
                ready: queue.Queue = queue.Queue()
                lines = iter(ready.get, None)
                sending = pool.submit(_run_s5cmd, client, ["run"], location, _NoBar(), len(names), lines)
                hashing = []
                try:
                    shards = []
                    with cf.ThreadPoolExecutor(max_workers=2) as builders:
                        for meta, members in zip(builders.map(build, zip(names, groups)), groups):
                            ready.put(command(meta["name"]))  # s5cmd sends it while the next ones are built
                            shards.append(meta)
                            hashing.append(pool.submit(hash_shard, meta, members, whole=False))
                finally:
                    ready.put(None)
                entries = [e for h in hashing for e in h.result()]
                sending.result()
                # s5cmd sent each shard in one part with Content-MD5, so the server's ETag is its MD5
                landed = list_objects(client, location)
                for meta in shards:
                    size, etag = landed.get(location.key(meta["name"]), (None, ""))
                    if size != meta["size"] or len(etag) != 32:
                        raise StorageError(f"shard {meta['name']} did not land whole; run the upload again: it resumes")
                    meta["md5"] = etag
                todo = shards
            else:
                shards = list(pool.map(build, zip(names, groups)))
                entries = [e for meta, members in zip(shards, groups) for e in hash_shard(meta, members)]
                todo = [sh for sh in shards if existing.get(location.key(sh["name"])) != (sh["size"], sh["md5"])]
                bar.update(sum(sh["files"] for sh in shards if sh not in todo))
                if todo:
                    _run_s5cmd(client, ["run"], location, _NoBar(), len(todo), [command(sh["name"], sh["md5"]) for sh in todo])
        bar.update(sum(sh["files"] for sh in todo))
        return shards, entries, sum(sh["size"] for sh in todo)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
