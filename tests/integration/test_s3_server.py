"""The embedded S3 server: real SeaweedFS processes on 127.0.0.1."""

import json
import os
import subprocess
import sys

import pytest

from cloudalliance import storage
from cloudalliance.local import services


def test_ensure_reuses_the_running_server(s3_server):
    again = storage.ensure_local_s3()
    assert again.pid == s3_server.pid and again.endpoint_url == s3_server.endpoint_url
    assert storage.local_s3_status().pid == s3_server.pid


def test_wrong_credentials_are_refused(s3_server, bucket):
    import boto3

    bad = boto3.client("s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id="intruder",
                       aws_secret_access_key="nope", region_name="us-east-1")
    with pytest.raises(Exception) as info:
        bad.put_object(Bucket=bucket, Key="x", Body=b"x")
    assert storage.error_code(info.value) in ("InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch")


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "cloudalliance", *args], capture_output=True, text=True,
                          env=env, timeout=180)


def test_cli_start_json_leaves_it_running_and_stop_stops_it(tmp_path):
    env = {**os.environ, services.STATE_ENV: str(tmp_path / "state")}
    started = _cli("s3", "start", "--json", env=env)
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    assert info["endpoint_url"].startswith("http://127.0.0.1:")
    try:
        # still answering after the CLI process has exited
        client = storage.create_s3_client("local", endpoint_url=info["endpoint_url"])
        assert storage.ensure_bucket(client, "cli-started") is True
        assert services.pid_alive(info["pid"])
        status = _cli("s3", "status", "--json", env=env)
        assert json.loads(status.stdout)["pid"] == info["pid"]
    finally:
        stopped = _cli("s3", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not services.pid_alive(info["pid"])
    assert services.wait_port_closed(info["ports"]["s3"])
    assert _cli("s3", "status", env=env).returncode == 1


def test_data_survives_a_restart(tmp_path, monkeypatch):
    monkeypatch.setenv(services.STATE_ENV, str(tmp_path / "state"))
    first = storage.start_local_s3()
    try:
        client = storage.create_s3_client("local", endpoint_url=first.endpoint_url)
        storage.ensure_bucket(client, "keep-me")
        client.put_object(Bucket="keep-me", Key="a.txt", Body=b"persisted")
    finally:
        storage.stop_local_s3()
    second = storage.start_local_s3()
    try:
        client = storage.create_s3_client("local", endpoint_url=second.endpoint_url)
        assert client.get_object(Bucket="keep-me", Key="a.txt")["Body"].read() == b"persisted"
    finally:
        storage.stop_local_s3()


def test_a_server_that_cannot_start_names_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv(services.STATE_ENV, str(tmp_path / "state"))
    with pytest.raises(services.ServiceError) as info:
        services.start_service("broken", [sys.executable, "-c", "import sys; print('bad flag'); sys.exit(3)"],
                               ports={}, endpoint_url="http://127.0.0.1:1", healthy=lambda: False, timeout=10)
    message = str(info.value)
    assert "exited with code 3" in message and "broken.log" in message and "bad flag" in message
    assert services.read_state("broken") is None


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path, monkeypatch):
    monkeypatch.setenv(services.STATE_ENV, str(tmp_path / "state"))
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(300)"
    info = services.start_service("stubborn", [sys.executable, "-c", code], ports={}, endpoint_url="-",
                                  healthy=lambda: "up" in open(tmp_path / "state" / "stubborn.log").read())
    assert services.stop_service("stubborn", grace=0.5) is True
    assert not services.pid_alive(info.pid)


def test_many_buckets_fit_whatever_the_free_disk(tmp_path, monkeypatch):
    """Slots are fixed, not sized from the free disk, and a bucket takes one volume, not seven."""
    monkeypatch.setenv(services.STATE_ENV, str(tmp_path / "state"))
    info = storage.start_local_s3()
    try:
        client = storage.create_s3_client("local", endpoint_url=info.endpoint_url, retries=1)
        for i in range(20):
            storage.ensure_bucket(client, f"many-{i:02d}")
            client.put_object(Bucket=f"many-{i:02d}", Key="a.txt", Body=b"x" * 100)
        topology = storage.server._master_topology(info.ports["master"])
        assert topology["Max"] == storage.LOCAL_VOLUME_SLOTS
        assert topology["Max"] - topology["Free"] <= 20 * storage.LOCAL_VOLUME_GROWTH + 2
    finally:
        storage.stop_local_s3()


def test_a_server_out_of_volume_slots_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(services.STATE_ENV, str(tmp_path / "state"))
    monkeypatch.setattr(storage.server, "LOCAL_VOLUME_SLOTS", 2)
    info = storage.start_local_s3()
    try:
        assert storage.local_s3_capacity_problem() == ""
        client = storage.create_s3_client("local", endpoint_url=info.endpoint_url, retries=1)
        with pytest.raises(storage.StorageError) as caught:
            for i in range(4):
                storage.ensure_bucket(client, f"full-{i}")
                try:
                    client.put_object(Bucket=f"full-{i}", Key="a.txt", Body=b"x")
                except Exception as exc:
                    raise storage.explain(exc, f"s3://full-{i}/a.txt") from exc
        assert "all its 2 volume slots" in str(caught.value) and "cloudalliance s3 stop" in str(caught.value)
    finally:
        storage.stop_local_s3()


def test_a_state_file_that_goes_while_it_is_read_is_no_service(tmp_path, monkeypatch):
    """A service being stopped removes its state file; a reader (the gateway following the endpoint) that
    checked for the file a moment before must get "no service", not an exception (it once became an HTTP 500)."""
    monkeypatch.setenv(services.STATE_ENV, str(tmp_path / "state"))
    services.state_dir().mkdir(parents=True, exist_ok=True)
    path = services._state_file("endpoint")
    path.mkdir(parents=True)  # exists() is True, reading it fails, as when the file goes in between
    assert services.read_state("endpoint") is None and services.running("endpoint") is None
