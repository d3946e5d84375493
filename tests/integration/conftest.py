import pytest


@pytest.fixture(scope="session")
def s3_server():
    """The embedded SeaweedFS for this test session (stopped at session end)."""
    from cloudalliance import storage

    info = storage.ensure_local_s3()
    yield info
    storage.stop_local_s3()


@pytest.fixture
def s3(s3_server):
    from cloudalliance.storage import create_s3_client

    return create_s3_client("local", endpoint_url=s3_server.endpoint_url)


@pytest.fixture
def bucket(s3, request):
    import re

    from cloudalliance.storage import ensure_bucket

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + "-b"
    ensure_bucket(s3, name)
    return name
