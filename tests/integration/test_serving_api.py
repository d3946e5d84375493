"""The artifact, the local endpoint and the local API gateway, for real (HTTP on 127.0.0.1)."""

import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from handler_support import ImageServer, routes_for  # noqa: E402

from cloudalliance.api import calls
from cloudalliance.local import gateway as local_gateway
from cloudalliance.serving import deploy, model_artifact
from cloudalliance.local import endpoint_server
from cloudalliance.local import services
from cloudalliance.training import launch
from cloudalliance.data.training_set import decode_images  # noqa: E402


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("serving")
    result = launch.run_local(synthetic_root / "seg_train", out / "model", "local-2cpu",
                              {"epochs": 1, "img_size": 48, "batch_size": 8}, test_dir=synthetic_root / "seg_test",
                              progress=False)
    files = sorted((synthetic_root / "seg_test" / "seg_test").rglob("*.jpg"))
    images = decode_images(files, 48, progress=False)
    path, check = model_artifact.package_model(result.model_dir, out / "model.tar.gz", check_images=images)
    return path, check, files


@pytest.fixture(scope="module")
def endpoint(artifact):
    info = endpoint_server.start_local_endpoint(artifact[0], endpoint_name="course-test")
    yield info
    endpoint_server.stop_local_endpoint()


def _invoke(client, image: bytes) -> dict:
    reply = client.invoke_endpoint(EndpointName="course-test", Body=image, ContentType="image/jpeg",
                                   Accept="application/json")
    return json.loads(reply["Body"].read())


def test_artifact_layout_and_onnx_agreement(artifact):
    path, check, _ = artifact
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
    assert {"model.pt", "model.onnx", "labels.json", "preprocess.json", "config.json", "metrics.json",
            "code/inference.py", "code/presets.py", "code/requirements.txt"} <= names
    assert check.images == 18 and check.same_label == 1.0 and check.max_abs_diff < 1e-4


def test_handlers_in_process(artifact, tmp_path):
    root = model_artifact.unpack_artifact(artifact[0], tmp_path / "unpacked")
    h = model_artifact.load_handlers(root)
    model = h.model_fn(str(root))
    body, content_type = h.output_fn(h.predict_fn(h.input_fn(artifact[2][0].read_bytes(), "image/jpeg"), model),
                                     "application/json")
    assert content_type == "application/json"
    reply = json.loads(body)
    assert reply["label"] in reply["probabilities"] and abs(sum(reply["probabilities"].values()) - 1) < 1e-3
    with pytest.raises(h.UnsupportedInput, match="not supported"):
        h.input_fn(b"x", "text/plain")


def test_boto3_runtime_client_against_the_local_endpoint(endpoint, artifact):
    client = deploy.runtime_client(endpoint.endpoint_url)
    files = artifact[2]
    reply = _invoke(client, files[0].read_bytes())
    assert set(reply) == {"label", "confidence", "probabilities"}
    # the endpoint agrees with the evaluation code on every test image
    from cloudalliance.evaluation import load_model
    from cloudalliance.training.recipe import predict

    root = Path(endpoint.data_dir)
    loaded = load_model(root)
    expected = predict(loaded.model, decode_images(files, 48, progress=False), loaded.preprocess,
                       __import__("torch").device("cpu"), tta=False).labels
    got = [loaded.classes.index(_invoke(client, f.read_bytes())["label"]) for f in files]
    assert got == list(expected)


def test_boto3_gets_invoke_endpoints_own_errors(endpoint, artifact):
    """What InvokeEndpoint raises on AWS (botocore/data/sagemaker-runtime/2017-05-13/service-2.json): an unknown
    endpoint is ``ValidationError``; a container that refuses the input is ``ModelError`` (HTTP 424) carrying the
    container's status and body in ``OriginalStatusCode`` / ``OriginalMessage``. Code written against the local
    endpoint then catches the same exceptions on AWS."""
    client = deploy.runtime_client(endpoint.endpoint_url)
    jpeg = artifact[2][0].read_bytes()
    with pytest.raises(client.exceptions.ValidationError, match="Endpoint nope of account .* not found"):
        client.invoke_endpoint(EndpointName="nope", Body=jpeg, ContentType="image/jpeg")
    with pytest.raises(client.exceptions.ModelError) as caught:
        client.invoke_endpoint(EndpointName="course-test", Body=b"hello", ContentType="text/csv")
    reply = caught.value.response
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 424 and reply["OriginalStatusCode"] == 415
    assert "error" in json.loads(reply["OriginalMessage"]) and "(415)" in reply["Error"]["Message"]
    assert reply["LogStreamArn"].startswith("arn:aws:logs:")
    # and the forwarding handler's answer to it is the API's 415, as for AWS's ModelError
    sys.path.insert(0, str(local_gateway.REPO_ROOT / "lambda" / "src"))
    import handler

    assert handler.endpoint_error(caught.value, 5.0).status == 415


def test_endpoint_refuses_bad_requests(endpoint):
    import urllib.error
    import urllib.request

    def post(path, body, ctype):
        req = urllib.request.Request(endpoint.endpoint_url + path, data=body, method="POST",
                                     headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert post("/invocations", b"hello", "text/plain")[0] == 415
    status, body = post("/invocations", b"not an image at all", "image/jpeg")
    assert status == 415 and "not an image" in body["error"]
    status, body = post("/endpoints/other/invocations", b"x", "image/jpeg")
    assert status == 400 and "not found" in body["error"]  # InvokeEndpoint's ValidationError, as on AWS
    with urllib.request.urlopen(endpoint.endpoint_url + "/ping", timeout=5) as r:
        assert json.loads(r.read())["status"] == "ok"


@pytest.fixture(scope="module")
def gateway(endpoint):
    info = local_gateway.start_local_gateway(endpoint.endpoint_url, "course-test", allowed_private_hosts="127.0.0.1")
    yield info
    services.stop_service(local_gateway.GATEWAY_SERVICE)


def test_curl_like_calls_through_gateway_handler_and_endpoint(gateway, artifact):
    files = artifact[2]
    jpeg = files[0].read_bytes()
    with ImageServer(routes_for(jpeg, 5_000_000)) as images:
        reply = calls.call_api(gateway.endpoint_url + "/predict", {"url": images.url + "/sea.jpg"})
        assert reply.status == 200 and reply.body["message"] == f"Image predicted: {reply.body['label']}"
        refused = calls.call_api(gateway.endpoint_url + "/predict", {"url": images.url + "/to-metadata"})
        assert refused.status == 403
    direct = calls.call_api(gateway.endpoint_url + "/predict", calls.image_payload(files[0]))
    assert direct.status == 200 and direct.body["label"] == reply.body["label"]
    bad = calls.call_api(gateway.endpoint_url + "/predict", b"{oops")
    assert bad.status == 400 and "Malformed JSON" in bad.body["error"]
    latency = calls.measure_latency(gateway.endpoint_url + "/predict", [calls.image_payload(f) for f in files[:3]],
                                  requests=20, warmup=2, progress=False)
    assert latency.errors == 0 and len(latency.seconds) == 20 and latency.percentile(99) >= latency.percentile(50)


def test_endpoint_down_is_a_503(tmp_path, artifact):
    port = services.free_port()
    info = local_gateway.start_local_gateway(f"http://127.0.0.1:{port}", "course-test")
    try:
        reply = calls.call_api(info.endpoint_url + "/predict", calls.image_payload(artifact[2][0]))
        assert reply.status == 503 and "not reachable" in reply.body["error"]
    finally:
        services.stop_service(local_gateway.GATEWAY_SERVICE)
