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


@pytest.mark.parametrize("etag, plain", [
    ('"9e107d9d372bb6826bd81d3542a419d6"', True),
    ("9e107d9d372bb6826bd81d3542a419d6", True),
    ("9e107d9d372bb6826bd81d3542a419d6-3", False),  # multipart: md5 of the part md5s, then -<parts>
    ("9E107D9D372BB6826BD81D3542A419D6", False),
    ("", False),
])
def test_is_plain_md5(etag, plain):
    from cloudalliance.storage.checksums import is_plain_md5

    assert is_plain_md5(etag) is plain


def test_tool_environment_sets_both_region_variables(monkeypatch):
    """botocore (so the aws CLI) reads AWS_DEFAULT_REGION, not AWS_REGION (botocore/configprovider.py, the
    'region' entry); s5cmd's Go SDK reads AWS_REGION: the tools' environment carries both."""
    import boto3

    from cloudalliance.storage import s5cmd_env

    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert boto3.Session().region_name is None, "botocore does not read AWS_REGION"
    client = create_s3_client("aws", region="eu-west-3", aws_access_key_id="k", aws_secret_access_key="s")
    env = s5cmd_env(client)
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-3"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", env["AWS_DEFAULT_REGION"])
    assert boto3.Session().region_name == "eu-west-3"


def test_s5cmd_endpoint_only_for_custom_servers():
    """On Amazon S3, s5cmd gets no --endpoint-url: given one, it addresses buckets path-style
    (peak/s5cmd storage/s3.go isVirtualHostStyle); a custom server gets its URL."""
    from cloudalliance.storage.s5cmd import s5cmd_endpoint_args

    aws = create_s3_client("aws", region="ap-south-1", aws_access_key_id="k", aws_secret_access_key="s")
    assert aws.meta.endpoint_url == "https://s3.ap-south-1.amazonaws.com"
    assert s5cmd_endpoint_args(aws) == []
    local = create_s3_client("local", endpoint_url="http://127.0.0.1:9")
    assert s5cmd_endpoint_args(local) == ["--endpoint-url", "http://127.0.0.1:9"]
    custom = create_s3_client("aws", endpoint_url="https://minio.example.org", region="us-east-1",
                              aws_access_key_id="k", aws_secret_access_key="s")
    assert s5cmd_endpoint_args(custom) == ["--endpoint-url", "https://minio.example.org"]


def _result(mode, rounds):
    import statistics

    from cloudalliance.storage.upload import UploadResult

    return UploadResult(source="src", location=f"s3://b/{mode}", mode=mode, workers=0, files=100, bytes=10**6,
                        uploaded=100, skipped=0, uploaded_bytes=10**6, seconds=statistics.median(rounds),
                        scan_seconds=0.0, rounds=list(rounds))


def test_comparison_over_rounds_takes_each_rounds_ratio_then_the_median():
    from cloudalliance.storage import comparison_table

    # the machine slows down in round 3: both tools take twice as long there
    table = comparison_table([_result("s5cmd", [10.0, 10.0, 20.0]), _result("shards", [2.0, 2.5, 4.0])])
    # per round 0.2, 0.25, 0.2 -> median 0.2; the ratio of the medians would be 2.5 / 10 = 0.25
    assert table.loc["shards", "x s5cmd"] == 0.2
    assert table.loc["s5cmd", "x s5cmd"] == 1.0
    assert (table.loc["shards", "min s"], table.loc["shards", "max s"]) == (2.0, 4.0)
    assert table.loc["shards", "seconds"] == 2.5


def test_comparison_of_one_round_divides_the_times():
    from cloudalliance.storage import comparison_table

    table = comparison_table([_result("s5cmd", [8.0]), _result("shards", [2.0])])
    assert table.loc["shards", "x s5cmd"] == 0.25
    assert "min s" not in table.columns


def test_one_round_ratios_come_from_the_unrounded_times():
    from cloudalliance.storage import comparison_table

    table = comparison_table([_result("s5cmd", [0.1825]), _result("objects", [0.2409]), _result("shards", [0.0794])])
    assert table.loc["objects", "x s5cmd"] == 1.320 and table.loc["shards", "x s5cmd"] == 0.435


def test_a_comparison_of_nothing_is_an_empty_table():
    from cloudalliance.storage import comparison_table

    assert comparison_table([]).empty
