"""Resume and verify when ETags are not MD5s: SSE-KMS buckets and multipart objects.

S3 API reference, Object / ETag (https://docs.aws.amazon.com/AmazonS3/latest/API/API_Object.html):
objects encrypted by SSE-C or SSE-KMS "have ETags that are not an MD5 digest of their object data",
and an object created by Multipart Upload has an ETag that "is not an MD5 digest, regardless of the
method of encryption". moto (in server mode, on 127.0.0.1) applies a bucket's default SSE-KMS to new
objects (moto/s3/models.py, ``put_object``: "getting default config from bucket") but still answers
the MD5 as ETag, so the KMS tests give moto's keys the opaque ETag S3 gives them; multipart ETags
(``<md5 of part md5s>-<parts>``) are real, from moto and from the embedded SeaweedFS.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.request

import pytest

from cloudalliance.storage import S3Location, create_s3_client, upload_folder, verify_upload
from cloudalliance.storage.checksums import is_plain_md5

moto = pytest.importorskip("moto")
pytest.importorskip("flask")  # moto's server


@pytest.fixture(scope="module")
def moto_server():
    from moto.server import ThreadedMotoServer

    from cloudalliance.local.services import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def moto_s3(moto_server, monkeypatch):
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10).read()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    return create_s3_client("aws", endpoint_url=moto_server, region="us-east-1", retries=2)


@pytest.fixture
def kms_etags(monkeypatch):
    """moto's objects under SSE-KMS get an opaque ETag, as on S3 (not the MD5 of their bytes)."""
    from moto.s3.models import FakeKey

    plain = FakeKey.etag

    def etag(self) -> str:
        value = plain.fget(self)
        if self.encryption in ("aws:kms", "aws:kms:dsse"):
            return '"' + hashlib.sha256(b"kms:" + value.encode()).hexdigest()[:32] + '"'
        return value

    monkeypatch.setattr(FakeKey, "etag", property(etag))


def kms_bucket(client, name: str) -> str:
    client.create_bucket(Bucket=name)
    client.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/test"}}]})
    return name


def rewrite_multipart(client, bucket: str, key: str, body: bytes, metadata: dict[str, str]) -> str:
    """Write ``key`` again as a one-part multipart upload (what s5cmd, the aws CLI and the console do for
    large files); returns the new ETag."""
    up = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata)
    part = client.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=body)
    done = client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    return done["ETag"].strip('"')


def test_kms_bucket_rerun_uploads_nothing_and_verify_passes(moto_s3, kms_etags, synthetic_root):
    loc = S3Location(kms_bucket(moto_s3, "kms-objects"), "data")
    first = upload_folder(synthetic_root, loc, moto_s3, engine="boto3", progress=False)
    assert first.uploaded == first.files > 0
    key = next(k for k in (o["Key"] for o in moto_s3.list_objects_v2(Bucket=loc.bucket)["Contents"])
               if k.endswith(".jpg"))
    head = moto_s3.head_object(Bucket=loc.bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms"
    body = moto_s3.get_object(Bucket=loc.bucket, Key=key)["Body"].read()
    assert head["ETag"].strip('"') != hashlib.md5(body).hexdigest(), "the ETag is not the MD5, as on S3"
    assert head["Metadata"]["md5"] == hashlib.md5(body).hexdigest()

    again = upload_folder(synthetic_root, loc, moto_s3, engine="boto3", progress=False)
    assert (again.uploaded, again.skipped) == (0, first.files)
    result = verify_upload(synthetic_root, loc, moto_s3)
    assert result.ok, (result.missing[:3], result.different[:3])


def test_kms_bucket_still_catches_a_corrupted_object(moto_s3, kms_etags, synthetic_root):
    loc = S3Location(kms_bucket(moto_s3, "kms-corrupt"), "data")
    upload_folder(synthetic_root, loc, moto_s3, engine="boto3", progress=False)
    listing = moto_s3.list_objects_v2(Bucket=loc.bucket, Prefix="data/")["Contents"]
    victim = next(o for o in listing if o["Key"].endswith(".jpg"))
    size = victim["Size"]
    # same size, other bytes, written by something else (no md5 metadata)
    moto_s3.put_object(Bucket=loc.bucket, Key=victim["Key"], Body=b"\xff" * size)
    result = verify_upload(synthetic_root, loc, moto_s3)
    assert result.different == [victim["Key"][len("data/"):]] and not result.missing
    # and a rerun sends that one file again, and only it
    again = upload_folder(synthetic_root, loc, moto_s3, engine="boto3", progress=False)
    assert again.uploaded == 1
    assert verify_upload(synthetic_root, loc, moto_s3).ok


@pytest.mark.parametrize("engine", ["boto3", "s5cmd"])
def test_kms_bucket_shards_resume_and_verify(moto_s3, kms_etags, synthetic_root, engine):
    """Both shard paths: Python tar + boto3, and GNU tar + s5cmd (whose first upload into an empty prefix
    would otherwise take each shard's MD5 from its ETag)."""
    from cloudalliance.storage import gnu_tar, s5cmd_binary

    if engine == "s5cmd" and not (gnu_tar() and s5cmd_binary()):
        pytest.skip("GNU tar or s5cmd not installed")
    loc = S3Location(kms_bucket(moto_s3, f"kms-shards-{engine}"), "shards")
    first = upload_folder(synthetic_root, loc, moto_s3, mode="shards", engine=engine, shard_mb=0.2, progress=False)
    assert first.shards > 1 and first.engine == ("gnu-tar+s5cmd" if engine == "s5cmd" else "boto3")
    again = upload_folder(synthetic_root, loc, moto_s3, mode="shards", engine=engine, shard_mb=0.2, progress=False)
    assert (again.uploaded, again.uploaded_bytes) == (0, 0)
    assert verify_upload(synthetic_root, loc, moto_s3).ok


def multipart_everything(client, loc: S3Location, corrupt: str = "") -> int:
    """Rewrite every uploaded object as a multipart upload keeping its md5 metadata (one, ``corrupt``, with
    other bytes of the same size and the old metadata dropped); returns how many."""
    count = 0
    for obj in client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.prefix + "/")["Contents"]:
        if obj["Key"].endswith("manifest.json"):
            continue
        got = client.get_object(Bucket=loc.bucket, Key=obj["Key"])
        body, meta = got["Body"].read(), got["Metadata"]
        if obj["Key"] == corrupt:
            body, meta = bytes(len(body)), {}
        etag = rewrite_multipart(client, loc.bucket, obj["Key"], body, meta)
        assert etag.endswith("-1") and not is_plain_md5(etag)
        count += 1
    return count


def test_multipart_objects_on_moto_resume_and_verify(moto_s3, synthetic_root):
    moto_s3.create_bucket(Bucket="multipart")
    loc = S3Location("multipart", "data")
    first = upload_folder(synthetic_root, loc, moto_s3, engine="boto3", progress=False)
    assert multipart_everything(moto_s3, loc) == first.files
    again = upload_folder(synthetic_root, loc, moto_s3, engine="boto3", progress=False)
    assert (again.uploaded, again.skipped) == (0, first.files)
    assert verify_upload(synthetic_root, loc, moto_s3).ok


def test_multipart_objects_on_seaweedfs_resume_verify_and_catch_corruption(s3, bucket, synthetic_root):
    loc = S3Location(bucket, "data")
    first = upload_folder(synthetic_root, loc, s3, engine="boto3", progress=False)
    assert first.uploaded == first.files
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="data/")["Contents"]
                  if o["Key"].endswith(".jpg"))
    # the s5cmd batch engine (what a resume sends with) stores the md5 metadata too
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[:2]]})
    resent = upload_folder(synthetic_root, loc, s3, engine="s5cmd", progress=False)
    assert (resent.engine, resent.uploaded) == ("s5cmd", 2)
    body = s3.get_object(Bucket=bucket, Key=keys[0])
    assert body["Metadata"].get("md5") == hashlib.md5(body["Body"].read()).hexdigest()

    victim = keys[-1]
    assert multipart_everything(s3, loc, corrupt=victim) == first.files
    result = verify_upload(synthetic_root, loc, s3)
    assert result.different == [victim[len("data/"):]] and not result.missing
    again = upload_folder(synthetic_root, loc, s3, engine="boto3", progress=False)
    assert (again.uploaded, again.skipped) == (1, first.files - 1)
    assert verify_upload(synthetic_root, loc, s3).ok
