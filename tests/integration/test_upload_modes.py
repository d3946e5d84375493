"""Upload modes, resume after a kill or a server restart, and verify — against the real SeaweedFS."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cloudalliance import storage
from cloudalliance.local import services
from cloudalliance.storage import S3Location, StorageError, upload_folder, verify_upload


@pytest.mark.parametrize("engine", ["s5cmd", "boto3"])
def test_objects_mode_engines_land_every_file_intact(s3, bucket, synthetic_root, engine):
    loc = S3Location(bucket, engine)
    result = upload_folder(synthetic_root, loc, s3, engine=engine, progress=False)
    assert result.engine == engine and result.uploaded == result.files
    assert verify_upload(synthetic_root, loc, s3).ok
    again = upload_folder(synthetic_root, loc, s3, engine=engine, progress=False)
    assert (again.uploaded, again.skipped) == (0, result.files)


def test_shards_mode_is_deterministic_resumable_and_readable(s3, bucket, synthetic_root, tmp_path):
    from cloudalliance.data.folders import load_image_folder, materialize_shards

    loc = S3Location(bucket, "shards")
    first = upload_folder(synthetic_root, loc, s3, mode="shards", shard_mb=0.2, progress=False)
    manifest = storage.read_manifest(s3, loc)
    names = [s["name"] for s in manifest["shards"]]
    assert first.shards == len(names) > 1 and names[0].endswith("-000000.tar")
    assert sum(s["files"] for s in manifest["shards"]) == first.files
    again = upload_folder(synthetic_root, loc, s3, mode="shards", shard_mb=0.2, progress=False)
    assert (again.uploaded, again.skipped, again.uploaded_bytes) == (0, first.files, 0), "same files, same shard bytes"
    assert verify_upload(synthetic_root, loc, s3).ok
    # what training gets: download the prefix (SageMaker File mode) and unpack the shards
    channel = tmp_path / "channel"
    storage.download_prefix(s3, loc, channel, progress=False)
    root = materialize_shards(channel, tmp_path / "unpacked")
    assert load_image_folder(root, "train").counts() == load_image_folder(synthetic_root, "train").counts()


def test_upload_benchmark_over_rounds_runs_every_tool_each_round_in_rotated_order(s3, bucket, synthetic_root,
                                                                                 monkeypatch):
    import statistics

    from cloudalliance.storage import compare

    order = []
    real = compare.delete_prefix  # called once before each timed upload, with that tool's prefix
    monkeypatch.setattr(compare, "delete_prefix", lambda client, loc: (order.append(loc.prefix.rsplit("/", 1)[-1]),
                                                                       real(client, loc))[1])
    results, notes = storage.compare_uploads(synthetic_root, bucket, s3, tools=["s5cmd", "objects", "shards"],
                                             shard_mb=0.2, progress=False, rounds=3)
    assert notes == []
    assert order == ["s5cmd", "objects", "shards", "objects", "shards", "s5cmd", "shards", "s5cmd", "objects"]
    assert [r.mode for r in results] == ["s5cmd", "objects", "shards"]
    for r in results:
        assert len(r.rounds) == 3 and r.seconds == statistics.median(r.rounds)
        assert r.uploaded == r.files  # each round uploaded into an emptied prefix, nothing skipped
    table = storage.comparison_table(results)
    s5, shards = results[0].rounds, results[2].rounds
    assert table.loc["shards", "x s5cmd"] == round(statistics.median(a / b for a, b in zip(shards, s5)), 3)


def test_upload_benchmark_refuses_a_folder_whose_files_the_tools_would_not_all_send(s3, bucket, synthetic_root,
                                                                                   tmp_path):
    import shutil

    src = tmp_path / "with-hidden"
    shutil.copytree(synthetic_root, src)
    (src / "seg_train" / ".DS_Store").write_bytes(b"finder")
    with pytest.raises(ValueError, match=r"seg_train/\.DS_Store.*would not upload the same files"):
        storage.compare_uploads(src, bucket, s3, tools=["s5cmd", "shards"], progress=False)
    # our two modes skip it alike, so they alone may compare
    results, _ = storage.compare_uploads(src, bucket, s3, tools=["objects", "shards", "objects"], progress=False)
    assert [r.mode for r in results] == ["objects", "shards"]  # a tool named twice runs once


def test_upload_benchmark_with_no_tool_installed_exits_2(s3_server, synthetic_root, monkeypatch, capsys):
    from cloudalliance.cli import main
    from cloudalliance.storage import compare

    monkeypatch.setattr(compare.shutil, "which", lambda *a, **k: None)  # no aws CLI anywhere
    assert main(["bench", "upload", str(synthetic_root), "--tools", "aws-s3-sync",
                 "--endpoint-url", s3_server.endpoint_url, "--bucket", "no-tool-bench"]) == 2
    assert "aws-s3-sync skipped: the AWS CLI is not installed" in capsys.readouterr().err


def test_verify_names_deleted_and_corrupted_objects(s3, bucket, synthetic_root, capsys):
    from cloudalliance.cli import main

    loc = S3Location(bucket, "verify")
    upload_folder(synthetic_root, loc, s3, progress=False)
    entries = storage.build_manifest(synthetic_root)
    s3.delete_object(Bucket=bucket, Key=loc.key(entries[0].path))
    s3.put_object(Bucket=bucket, Key=loc.key(entries[1].path), Body=b"corrupted bytes")
    result = verify_upload(synthetic_root, loc, s3)
    assert result.missing == [entries[0].path] and result.different == [entries[1].path] and not result.ok
    endpoint = s3.meta.endpoint_url
    assert main(["s3", "verify", str(synthetic_root), loc.uri, "--endpoint-url", endpoint]) == 1
    out = capsys.readouterr().out
    assert f"missing    {entries[0].path}" in out and f"different  {entries[1].path}" in out
    upload_folder(synthetic_root, loc, s3, progress=False)
    assert main(["s3", "verify", str(synthetic_root), loc.uri, "--endpoint-url", endpoint]) == 0


@pytest.mark.parametrize("mode", ["objects", "shards"])
def test_permanent_error_stops_with_a_clear_message(s3, synthetic_root, mode):
    with pytest.raises(StorageError, match="NoSuchBucket|does not exist"):
        upload_folder(synthetic_root, S3Location("no-such-bucket-anywhere", "x"), s3, mode=mode, progress=False)


def test_a_killed_upload_resumes(s3_server, s3, bucket, tmp_path):
    """SIGKILL the CLI mid-upload; the rerun sends only what is missing, verify then passes."""
    from cloudalliance.data.synthetic import SyntheticSpec, generate_synthetic

    src = generate_synthetic(tmp_path / "src", SyntheticSpec(60, 0, 0, seed=3), progress=False)
    loc = S3Location(bucket, "killed")
    argv = [sys.executable, "-m", "cloudalliance", "s3", "upload", str(src), loc.uri, "--endpoint-url",
            s3_server.endpoint_url, "--engine", "boto3", "--workers", "2", "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(storage.list_objects(s3, loc)) < 40:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(storage.list_objects(s3, loc))
    total = len(storage.build_manifest(src))
    assert 0 < partial < total, f"killed midway ({partial} of {total})"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    result = json.loads(done.stdout)
    assert result["skipped"] >= partial and result["uploaded"] == total - result["skipped"]
    assert verify_upload(src, loc, s3).ok


def test_a_killed_s5cmd_upload_leaves_no_s5cmd_behind_and_resumes(s3_server, s3, bucket, tmp_path):
    from cloudalliance.data.synthetic import SyntheticSpec, generate_synthetic

    src = generate_synthetic(tmp_path / "src", SyntheticSpec(80, 0, 0, seed=5), progress=False)
    loc = S3Location(bucket, "killed-s5cmd")
    argv = [sys.executable, "-m", "cloudalliance", "s3", "upload", str(src), loc.uri, "--endpoint-url",
            s3_server.endpoint_url, "--engine", "s5cmd", "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    child = None
    while time.monotonic() < deadline and child is None and proc.poll() is None:
        found = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "s5cmd"], capture_output=True, text=True).stdout.split()
        child = int(found[0]) if found else None
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert child is not None, "s5cmd was seen running under the upload"
    for _ in range(100):
        if not services.pid_alive(child):
            break
        time.sleep(0.05)
    assert not services.pid_alive(child), "s5cmd stops with the upload that started it (its output pipe closes)"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert verify_upload(src, loc, s3).ok


def test_server_stopped_mid_upload_then_restarted(tmp_path, monkeypatch):
    """The server dies during an upload: a clear error; after a restart the rerun completes it."""
    from cloudalliance.data.synthetic import SyntheticSpec, generate_synthetic

    monkeypatch.setenv(services.STATE_ENV, str(tmp_path / "state"))
    src = generate_synthetic(tmp_path / "src", SyntheticSpec(60, 0, 0, seed=4), progress=False)
    info = storage.start_local_s3()
    try:
        client = storage.create_s3_client("local", endpoint_url=info.endpoint_url, retries=2)
        storage.ensure_bucket(client, "restart")
        loc = S3Location("restart", "data")
        argv = [sys.executable, "-m", "cloudalliance", "s3", "upload", str(src), loc.uri, "--endpoint-url",
                info.endpoint_url, "--engine", "boto3", "--workers", "2"]
        env = {**os.environ, services.STATE_ENV: str(tmp_path / "state")}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(storage.list_objects(client, loc)) < 30:
            time.sleep(0.05)
        storage.stop_local_s3()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and ("cannot reach the S3 endpoint" in err or "then run again" in err), err[-500:]
        assert "Traceback" not in err
        info = storage.start_local_s3()
        client = storage.create_s3_client("local", endpoint_url=info.endpoint_url)
        partial = len(storage.list_objects(client, loc))
        result = upload_folder(src, loc, client, engine="boto3", progress=False)
        assert result.skipped >= partial and result.skipped + result.uploaded == result.files
        assert verify_upload(src, loc, client).ok
    finally:
        storage.stop_local_s3()


@pytest.mark.parametrize("engine", ["s5cmd", "boto3"])
def test_shards_of_linked_files_carry_the_files_bytes(s3, bucket, synthetic_root, tmp_path, engine):
    """`data split` links files: a shard must hold each file's bytes (GNU tar --dereference), not a link to a
    path that only exists on this machine."""
    import tarfile

    from cloudalliance.data.folders import split_folder

    linked = tmp_path / "linked"
    split_folder(synthetic_root / "seg_train", linked, test_fraction=0.3)
    assert any(p.is_symlink() for p in linked.rglob("*.jpg"))
    loc = S3Location(bucket, f"linked-{engine}")
    result = upload_folder(linked, loc, s3, mode="shards", engine=engine, progress=False)
    assert result.uploaded_bytes >= result.bytes > 50_000 and verify_upload(linked, loc, s3).ok
    shard = tmp_path / "shard.tar"
    s3.download_file(bucket, loc.key(storage.read_manifest(s3, loc)["shards"][0]["name"]), str(shard))
    with tarfile.open(shard) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
        assert members and all(m.isfile() for m in members), [(m.name, m.type) for m in members[:3]]
        for m in members:
            assert m.size == (linked / m.name).stat().st_size, m.name
