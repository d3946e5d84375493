"""Uploads against the real embedded SeaweedFS."""

import pytest

from cloudalliance import storage
from cloudalliance.storage import S3Location, StorageError, upload_folder


def test_upload_writes_every_file_and_the_manifest(s3, bucket, synthetic_root):
    loc = S3Location(bucket, "intel")
    result = upload_folder(synthetic_root, loc, s3, workers=8, progress=False)
    local = storage.build_manifest(synthetic_root)
    assert result.files == len(local) and result.uploaded == len(local) and result.skipped == 0
    listed = storage.list_objects(s3, loc)
    for entry in local:
        assert listed[loc.key(entry.path)] == (entry.size, entry.md5)
    manifest = storage.read_manifest(s3, loc)
    assert manifest["files"] == len(local)
    assert {e["path"]: e["md5"] for e in manifest["entries"]} == {e.path: e.md5 for e in local}
    body = s3.get_object(Bucket=bucket, Key=loc.key(local[0].path))["Body"].read()
    assert body == (synthetic_root / local[0].path).read_bytes()


def test_rerun_sends_only_what_is_missing_or_different(s3, bucket, synthetic_root, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(synthetic_root, src)
    loc = S3Location(bucket, "resume")
    first = upload_folder(src, loc, s3, progress=False)
    entries = storage.build_manifest(src)
    # lose two objects, change one local file
    s3.delete_object(Bucket=bucket, Key=loc.key(entries[0].path))
    s3.delete_object(Bucket=bucket, Key=loc.key(entries[1].path))
    (src / entries[2].path).write_bytes(b"changed")
    second = upload_folder(src, loc, s3, progress=False)
    assert (second.uploaded, second.skipped) == (3, first.files - 3)
    assert s3.get_object(Bucket=bucket, Key=loc.key(entries[2].path))["Body"].read() == b"changed"
    third = upload_folder(src, loc, s3, progress=False)
    assert (third.uploaded, third.skipped) == (0, first.files)


def test_upload_record(s3, bucket, synthetic_root):
    result = upload_folder(synthetic_root, S3Location(bucket, "rec"), s3, progress=False)
    rec = storage.upload_record(result)
    assert rec.stage == "upload" and rec.sizes["files"] == result.files
    assert rec.metrics["files_per_s"] > 0 and rec.timings["total_s"] > 0
    # the load average as the upload started and as its record was made (a contended run can be flagged)
    assert len(rec.load["start"]) == 3 and len(rec.load["end"]) == 3


def test_missing_bucket_is_a_permanent_error(s3, synthetic_root):
    with pytest.raises(StorageError, match="NoSuchBucket|does not exist"):
        upload_folder(synthetic_root, S3Location("no-such-bucket-here", "x"), s3, progress=False)


def test_unreachable_server_is_a_clear_error(synthetic_root):
    from cloudalliance.local.services import free_port

    client = storage.create_s3_client("local", endpoint_url=f"http://127.0.0.1:{free_port()}", retries=1)
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
        upload_folder(synthetic_root, S3Location("bucket", "x"), client, progress=False)
