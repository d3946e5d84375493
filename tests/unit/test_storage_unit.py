import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from cloudalliance.storage import S3Location, StorageError, build_manifest, create_s3_client, explain, md5_file


@pytest.mark.parametrize("uri, bucket, prefix", [
    ("s3://b-1/a/b/", "b-1", "a/b"),
    ("s3://bucket", "bucket", ""),
    ("s3://bucket/", "bucket", ""),
])
def test_parse(uri, bucket, prefix):
    loc = S3Location.parse(uri)
    assert (loc.bucket, loc.prefix) == (bucket, prefix)
    assert loc.key("x/y.jpg") == (f"{prefix}/x/y.jpg" if prefix else "x/y.jpg")


@pytest.mark.parametrize("bad", ["bucket/prefix", "s3://", "http://x/y", None])
def test_parse_rejects(bad):
    with pytest.raises(ValueError, match="S3"):
        S3Location.parse(bad)


def test_explain_permanent_and_connection_errors():
    err = ClientError({"Error": {"Code": "NoSuchBucket", "Message": "x"}}, "PutObject")
    assert "create it first" in str(explain(err, "s3://nope"))
    err = explain(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert isinstance(err, StorageError) and "cloudalliance s3 start" in str(err)


def test_aws_client_uses_the_region_and_no_endpoint():
    client = create_s3_client("aws", region="eu-west-1")
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    with pytest.raises(ValueError, match="choose one of: local, aws"):
        create_s3_client("gcs")


def test_manifest_sizes_and_md5(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"abc")
    (tmp_path / ".hidden").write_text("skip me")
    (tmp_path / "manifest.json").write_text("{}")
    entries = build_manifest(tmp_path)
    assert [(e.path, e.size, e.md5) for e in entries] == [("a/x.jpg", 3, "900150983cd24fb0d6963f7d28e17f72")]
    assert md5_file(tmp_path / "a" / "x.jpg") == entries[0].md5
    with pytest.raises(FileNotFoundError, match="not a folder"):
        build_manifest(tmp_path / "missing")
