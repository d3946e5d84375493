"""The model inside Lambda (lambda/src/handler_onnx.py): its package, and the same API as the forwarding function.

Both functions run behind real local gateways on 127.0.0.1 (the endpoint mode in front of a real local endpoint),
and every request of one suite must get the same status and body from both.
"""

import base64
import json
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from handler_support import ImageServer, routes_for  # noqa: E402

from cloudalliance import cli  # noqa: E402
from cloudalliance.api import calls
from cloudalliance.local import gateway
from cloudalliance.api import lambda_package
from cloudalliance.bench import lambda_modes
from cloudalliance.local import endpoint_server
from cloudalliance.local import services


@pytest.fixture(scope="module")
def local_package(tiny_artifact, tmp_path_factory):
    return lambda_package.build_package(tiny_artifact[0], tmp_path_factory.mktemp("pkg") / "local",
                                        platform_name="local")


@pytest.fixture(scope="module")
def gateways(tiny_artifact, local_package):
    """(endpoint-mode URL, lambda-mode URL), both allowing 127.0.0.1 image URLs; stopped by PID afterwards."""
    started = []
    try:
        endpoint = endpoint_server.start_local_endpoint(tiny_artifact[0], endpoint_name="inlambda-test")
        started.append(endpoint_server.ENDPOINT_SERVICE)
        forward = gateway.start_local_gateway(endpoint.endpoint_url, "inlambda-test", allowed_private_hosts="127.0.0.1")
        started.append(gateway.GATEWAY_SERVICE)
        inside = gateway.start_local_gateway(allowed_private_hosts="127.0.0.1", mode="lambda", package=local_package.path)
        started.append(gateway.LAMBDA_GATEWAY_SERVICE)
        yield forward.endpoint_url + gateway.ROUTE, inside.endpoint_url + gateway.ROUTE
    finally:
        for name in reversed(started):
            services.stop_service(name)


def test_local_package_layout_and_manifest(local_package, tiny_artifact):
    root = local_package.path
    for name in ("handler.py", "guards.py", "url_fetch.py", "handler_onnx.py", "package.json", "model/model.onnx",
                 "model/labels.json", "model/preprocess.json", "model/code/inference.py", "model/code/presets.py"):
        assert (root / name).is_file(), name
    assert not (root / "model" / "model.pt").exists()  # PyTorch weights: the function runs model.onnx
    manifest = lambda_package.read_manifest(root)
    assert manifest["platform"] == "local" and manifest["handler"] == "handler_onnx.lambda_handler"
    with zipfile.ZipFile(local_package.zip_path) as zf:
        names = set(zf.namelist())
    assert {"handler.py", "guards.py", "url_fetch.py", "handler_onnx.py", "model/model.onnx"} <= names
    assert len(names) == local_package.files
    assert local_package.unzipped_bytes == sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_predictions_equal_the_endpoints_on_every_test_image(gateways, tiny_artifact):
    forward, inside = gateways
    files = tiny_artifact[1]
    assert len(files) >= 12
    for path in files:
        a = calls.call_api(forward, calls.image_payload(path))
        b = calls.call_api(inside, calls.image_payload(path))
        assert a.status == b.status == 200, (path, a.body, b.body)
        assert a.body["label"] == b.body["label"] and a.body["message"] == b.body["message"]
        assert a.body["probabilities"].keys() == b.body["probabilities"].keys()
        for cls, p in a.body["probabilities"].items():
            assert abs(p - b.body["probabilities"][cls]) <= 1e-5, (path, cls)


def _suite(images_url: str, jpeg: bytes) -> dict:
    big = base64.b64encode(b"\xff\xd8\xff" + b"0" * (4 * 1024 * 1024 + 10)).decode()
    return {
        "url": {"url": images_url + "/sea.jpg"},
        "url, octet-stream": {"url": images_url + "/octet.jpg"},
        "redirect to the image": {"url": images_url + "/to-sea"},
        "redirect to metadata": {"url": images_url + "/to-metadata"},
        "redirect to private": {"url": images_url + "/to-private"},
        "html page": {"url": images_url + "/page.html"},
        "text pretending": {"url": images_url + "/fake.jpg"},
        "404 image": {"url": images_url + "/gone.jpg"},
        "ftp": {"url": "ftp://example.com/a.jpg"},
        "metadata": {"url": "http://169.254.169.254/latest/meta-data/"},
        "both fields": {"url": images_url + "/sea.jpg", "image": base64.b64encode(jpeg).decode()},
        "neither": {"picture": 1},
        "image not a string": {"image": 12},
        "not base64": {"image": "%%%"},
        "not an image": {"image": base64.b64encode(b"hello world").decode()},
        "truncated jpeg": {"image": base64.b64encode(jpeg[: len(jpeg) // 3]).decode()},
        "base64 too big": {"image": big},
        "malformed JSON": b"{oops",
        "JSON list": b"[1, 2]",
        "empty body": b"",
    }


def test_the_same_request_suite_gets_the_same_answers(gateways, tiny_artifact):
    forward, inside = gateways
    jpeg = tiny_artifact[1][0].read_bytes()
    with ImageServer(routes_for(jpeg, 5_000_000)) as images:
        suite = _suite(images.url, jpeg)
        answers = {}
        for name, payload in suite.items():
            a, b = calls.call_api(forward, payload), calls.call_api(inside, payload)
            answers[name] = (a.status, b.status)
            assert a.status == b.status, (name, a.body, b.body)
            if a.status == 200:
                assert a.body["label"] == b.body["label"]
            else:
                assert a.body == b.body, name
    statuses = {s for s, _ in answers.values()}
    assert 200 in statuses and {400, 403, 413, 415} <= statuses, answers
    assert answers["truncated jpeg"][0] in (200, 415)  # PIL may decode a truncated JPEG's top part or refuse it
    assert answers["not an image"] == (415, 415) and answers["redirect to metadata"] == (403, 403)


def test_lambda_mode_needs_no_endpoint_and_other_methods_are_404(gateways, tiny_artifact):
    _, inside = gateways
    import urllib.request

    for method in ("GET", "PUT", "DELETE"):
        req = urllib.request.Request(inside, method=method)
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("expected an HTTP error")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404 and "error" in json.loads(exc.read())
    reply = calls.call_api(inside, calls.image_payload(tiny_artifact[1][0]))
    assert reply.status == 200


def test_cold_starts_in_fresh_processes(local_package, tiny_artifact):
    image = tiny_artifact[1][0].read_bytes()
    cold = lambda_modes.measure_cold_starts(local_package.path, image, runs=2, warm=5, progress=False)
    summary = cold.summary()
    assert summary["cold_starts"] == 2 and len(cold.warm_s) == 5
    # the parent's wall time covers the child's import and first answer, which the child timed itself
    assert all(w >= i + f for w, i, f in zip(cold.wall_s, cold.import_s, cold.first_s))
    # its own peak (VmHWM), not this test process's, which ru_maxrss would carry across fork + exec
    assert 30 < summary["peak_rss_mb"] < 400
    assert lambda_modes.recommend_memory(summary["peak_rss_mb"]) >= 1024


def test_the_bare_library_is_measured_beside_the_function_and_the_record_keeps_the_ratios(local_package, tiny_artifact):
    """Issue 23's yardstick: the same model.onnx in a fresh interpreter that imports only numpy and onnxruntime."""
    image = tiny_artifact[1][0].read_bytes()
    cold = lambda_modes.measure_cold_starts(local_package.path, image, runs=2, warm=5, progress=False)
    bare = lambda_modes.measure_bare(local_package.path, runs=2, warm=5, threads=2)
    assert bare["bare_threads"] == 2 and 0 < bare["bare_inside_median_ms"] < bare["bare_cold_start_median_ms"]
    assert 0 < bare["bare_warm_p50_ms"] and 0 < bare["bare_warm_p50_ms_1_thread"] and 20 < bare["bare_peak_rss_mb"]
    latency = calls.LatencyResult(requests=1, errors=0, seconds=[0.01])
    record = lambda_modes.mode_record("lambda", "local", cold, latency, "x", bare=bare)
    ratio = record.metrics["cold_start_median_ms"] / record.metrics["bare_cold_start_median_ms"]
    assert record.metrics["cold_start_vs_bare"] == pytest.approx(ratio, abs=0.01)
    (row,) = lambda_modes.modes_table([record])
    assert row["cold start ÷ bare ONNX Runtime"] == record.metrics["cold_start_vs_bare"]
    # the gateway's share: the p50 through it (10 ms here) less the function's own warm p50
    assert record.metrics["gateway_adds_p50_ms"] == pytest.approx(10 - record.metrics["handler_warm_p50_ms"], abs=1e-3)
    assert row["gateway adds p50 (ms)"] == round(record.metrics["gateway_adds_p50_ms"], 1)


def test_a_broken_package_fails_the_cold_start_with_its_error(local_package, tmp_path, tiny_artifact):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(local_package.path, broken)
    (broken / "model" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(lambda_package.PackageError, match="failed"):
        lambda_modes.measure_cold_starts(broken, tiny_artifact[1][0].read_bytes(), runs=1, warm=0, progress=False)


def test_the_lambda_platform_package_runs_with_only_its_own_wheels(tiny_artifact, tmp_path):
    """Built as for Lambda (manylinux wheels, --no-deps, trimmed) but for this interpreter, then imported by a
    Python with no site-packages: ONNX Runtime, numpy and Pillow must all come from the package."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    try:
        info = lambda_package.build_package(tiny_artifact[0], tmp_path / "iso", python=here,
                                            arch=lambda_package._machine_arch())
    except lambda_package.PackageError as exc:
        if "PyPI reachable" in str(exc):
            pytest.skip(f"no wheels from PyPI here: {exc}")
        raise
    root = info.path
    assert {"onnxruntime", "numpy", "PIL"} <= {p.name for p in root.iterdir()}
    assert not list(root.rglob("*.pyi")) and not (root / "bin").exists()
    # byte-code only for the runtime's Python (pip's own caches are for the Python that ran pip), and only where
    # that Python was found to compile it: /var/task is read-only, so a missing .pyc is compiled on every cold start
    tag = f"cpython-{sys.version_info[0]}{sys.version_info[1]}"
    pycs = list(root.rglob("*.pyc"))
    assert all(tag in p.name for p in pycs)
    assert bool(pycs) == lambda_package.read_manifest(root)["bytecode"]
    assert not (root / "onnxruntime" / "transformers").exists() and not list(root.rglob("tests"))
    assert info.packages == dict(line.split("==") for line in
                                 __import__("cloudalliance.training.sagemaker", fromlist=["x"]).pinned_requirements(
                                     lambda_package.RUNTIME_PACKAGES))
    cold = lambda_modes.measure_cold_starts(root, tiny_artifact[1][0].read_bytes(), runs=1, warm=3, progress=False)
    assert cold.isolated and len(cold.warm_s) == 3


def test_too_big_a_package_is_refused_and_the_old_one_kept(tiny_artifact, tmp_path, monkeypatch):
    out = tmp_path / "pkg"
    first = lambda_package.build_package(tiny_artifact[0], out, platform_name="local", make_zip=False)
    monkeypatch.setattr(lambda_package, "UNZIPPED_LIMIT", first.unzipped_bytes // 2)
    with pytest.raises(lambda_package.PackageError, match="unzipped"):
        lambda_package.build_package(tiny_artifact[0], out, platform_name="local", make_zip=False)
    assert (out / "handler_onnx.py").is_file()  # the earlier package is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pkg.")]  # no staging folder left behind


def test_cli_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"not a tarball")
    assert cli.main(["lambda", "package", "--artifact", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not a model artifact" in capsys.readouterr().err
    assert cli.main(["lambda", "package", "--artifact", str(tmp_path / "missing.tar.gz")]) == 2
    assert cli.main(["api", "start", "--mode", "lambda"]) == 2
    assert "--package" in capsys.readouterr().err
    assert cli.main(["api", "start", "--mode", "lambda", "--package", str(tmp_path)]) == 2
    assert cli.main(["api", "start"]) == 2  # endpoint mode without --endpoint-url


def test_a_package_built_for_lambdas_python_is_refused_by_the_local_gateway(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "handler_onnx.py").write_text("")
    (pkg / "package.json").write_text(json.dumps({"platform": "lambda", "python": "2.7", "arch": "x86_64"}))
    with pytest.raises(ValueError, match="--platform local"):
        gateway.start_local_gateway(mode="lambda", package=pkg)


def test_out_that_is_not_a_package_is_refused_and_kept(tiny_artifact, tmp_path, capsys):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "important.txt").write_text("precious")
    with pytest.raises(lambda_package.PackageError, match="holds other files"):
        lambda_package.build_package(tiny_artifact[0], victim, platform_name="local")
    assert (victim / "sub" / "important.txt").read_text() == "precious"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.main(["lambda", "package", "--artifact", str(tiny_artifact[0]), "--platform", "local",
                     "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    # a local package has no default folder: lambda/package is what `sam deploy` uploads
    assert cli.main(["lambda", "package", "--artifact", str(tiny_artifact[0]), "--platform", "local"]) == 2


def test_the_templates_folder_keeps_its_readme_and_rebuilds_are_identical(tiny_artifact, tmp_path):
    import hashlib

    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "README.md").write_text("built by cloudalliance lambda package\n")  # as lambda/package's, in git
    first = lambda_package.build_package(tiny_artifact[0], folder, platform_name="local")
    assert (folder / "README.md").read_text().startswith("built by")
    with zipfile.ZipFile(first.zip_path) as zf:
        assert "README.md" not in zf.namelist()
    digest = hashlib.sha256(first.zip_path.read_bytes()).hexdigest()
    again = lambda_package.build_package(tiny_artifact[0], folder, platform_name="local")
    assert hashlib.sha256(again.zip_path.read_bytes()).hexdigest() == digest  # no build time, no local path inside
    manifest = lambda_package.read_manifest(folder)
    assert manifest["artifact"] == "model.tar.gz" and "built" not in manifest
    modes = {p.stat().st_mode & 0o777 for p in folder.rglob("*") if p.is_file()}
    assert modes <= {0o644, 0o755}


def test_a_form_encoded_body_over_lambdas_payload_is_a_413(gateways):
    """API Gateway hands Lambda a form-encoded body base64-encoded (4/3 larger); over Lambda's 6 MB the function
    never runs. The local gateway says so instead of answering 200."""
    _, inside = gateways
    body = json.dumps({"image": base64.b64encode(b"\xff\xd8\xff" + b"0" * 3_700_000).decode()}).encode()
    reply = calls.call_api(inside, body, content_type="application/x-www-form-urlencoded")
    assert reply.status == 413 and "6 MB" in reply.body["error"]
    as_json = calls.call_api(inside, body)
    assert as_json.status != 413 or "6 MB" not in as_json.body.get("error", "")


def test_missing_package_message_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        gateway.start_local_gateway(mode="lambda", package=tmp_path / "nowhere")


# last: it replaces the module's lambda-mode gateway with one of its own
def test_bench_lambda_leaves_the_users_gateways_and_checks_its_input(tiny_artifact, tmp_path, capsys):
    image = tiny_artifact[1][0]
    assert cli.main(["bench", "lambda", "--artifact", str(tiny_artifact[0]), "--image", str(image),
                     "--runs", "0"]) == 2
    text = tmp_path / "not-an-image.jpg"
    text.write_text("hello")
    assert cli.main(["bench", "lambda", "--artifact", str(tiny_artifact[0]), "--image", str(text),
                     "--out", str(tmp_path / "b0")]) == 2
    assert "not an image" in capsys.readouterr().err and not (tmp_path / "b0").exists()
    package = lambda_package.build_package(tiny_artifact[0], tmp_path / "mine", platform_name="local")
    # the default name, as `cloudalliance api start --mode lambda` starts it (this replaces the module's gateway)
    mine = gateway.start_local_gateway(allowed_private_hosts="127.0.0.1", mode="lambda", package=package.path)
    try:
        records = tmp_path / "records"
        capsys.readouterr()
        assert cli.main(["bench", "lambda", "--artifact", str(tiny_artifact[0]), "--image", str(image),
                         "--runs", "1", "--requests", "3", "--arch", "--out", str(tmp_path / "b"),
                         "--record-dir", str(records), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)  # --json: JSON alone on stdout, for `| jq`
        assert [row["mode"] for row in rows] == ["endpoint", "lambda"]
        still = services.running(gateway.LAMBDA_GATEWAY_SERVICE)
        assert still is not None and still.pid == mine.pid
        from cloudalliance.records import load_records

        by_mode = {r.config["mode"]: r for r in load_records(records)}
        assert by_mode["endpoint"].config["lambda_memory_mb"] == 512  # the forwarding function's, as deployed
        assert by_mode["lambda"].config["lambda_memory_mb"] >= 1024
        assert [s.name for s in services.list_services() if s.name.startswith("bench-")] == []
    finally:
        services.stop_service(gateway.LAMBDA_GATEWAY_SERVICE)


def test_the_gateways_thread_count_is_the_handlers_rule(local_package, monkeypatch):
    """The local gateway passes the count as a number (an older package's inference.py reads only numbers);
    it is the one handler_onnx derives in Lambda."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
    module = gateway.load_handler(Path(local_package.path) / "handler_onnx.py")
    for memory in (128, 1024, 1769, 3538, 5307, 10240):
        assert gateway.in_lambda_environment(memory)["INFERENCE_THREADS"] == str(module.inference_threads(
            {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory)})), memory


@pytest.mark.parametrize("env, expected", [
    # Lambda: one vCPU per 1,769 MB (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html)
    ({"INFERENCE_THREADS": "auto", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}, 1),
    ({"INFERENCE_THREADS": "auto", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3537"}, 1),
    ({"INFERENCE_THREADS": "auto", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3538"}, 2),
    ({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "10240"}, 5),  # unset is auto; capped at the cores seen below
    ({"INFERENCE_THREADS": "3", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}, 3),  # a number wins
])
def test_the_functions_threads_follow_its_memory_size(local_package, monkeypatch, env, expected):
    """The template says ``INFERENCE_THREADS: auto``: the session gets a thread per whole vCPU the memory buys, so
    a function given 3,538 MB or more uses its second vCPU and one below it does not oversubscribe its share."""
    import os

    monkeypatch.delenv("INFERENCE_THREADS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    module = gateway.load_handler(Path(local_package.path) / "handler_onnx.py")
    if "INFERENCE_THREADS" not in env or env["INFERENCE_THREADS"] == "auto":
        expected = min(expected, os.cpu_count() or 1)
    assert module.THREADS == expected
    assert module.MODEL["session"].get_session_options().intra_op_num_threads == expected


@pytest.mark.parametrize("value", ["two", "-1"])
def test_a_bad_thread_count_fails_the_init_and_says_what_to_give(local_package, monkeypatch, value):
    monkeypatch.setenv("INFERENCE_THREADS", value)
    with pytest.raises(RuntimeError, match="INFERENCE_THREADS"):
        gateway.load_handler(Path(local_package.path) / "handler_onnx.py")


def test_the_local_lambda_gateway_and_cold_starts_get_the_templates_memory():
    import re

    template = (gateway.REPO_ROOT / "lambda" / "template.yaml").read_text()
    block = re.search(r"(?ms)^  InLambdaMemorySize:\n(.*?)\n  \w", template).group(1)
    assert int(re.search(r"Default:\s*(\d+)", block).group(1)) == gateway.IN_LAMBDA_MEMORY_MB
    assert gateway.in_lambda_environment() == {"INFERENCE_THREADS": "1",
                                           "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(gateway.IN_LAMBDA_MEMORY_MB)}
    with pytest.raises(ValueError, match="128 to 10,240"):
        gateway.in_lambda_environment(20000)
    assert cli.main(["api", "start", "--mode", "endpoint", "--endpoint-url", "http://127.0.0.1:1",
                     "--memory-mb", "2048"]) == 2


def test_a_package_of_an_older_artifact_still_answers(local_package, tiny_artifact, tmp_path):
    """Artifacts built before output_fn returned (body, content type) return the body alone: the handler and the
    local endpoint take both."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(local_package.path, old)
    code = old / "model" / "code" / "inference.py"
    text = code.read_text()
    assert 'return json.dumps(body), "application/json"' in text
    code.write_text(text.replace('return json.dumps(body), "application/json"', "return json.dumps(body)"))
    module = gateway.load_handler(old / "handler_onnx.py")
    image = base64.b64encode(tiny_artifact[1][0].read_bytes()).decode()
    event = gateway.http_api_event("POST", "/predict", {"content-type": "application/json"},
                               json.dumps({"image": image}).encode())
    reply = module.lambda_handler(event, gateway.LocalContext())
    assert reply["statusCode"] == 200 and json.loads(reply["body"])["label"], reply


@pytest.fixture(scope="module")
def int8_package(tiny_artifact, synthetic_root, tmp_path_factory):
    from cloudalliance.serving import quantize

    work = tmp_path_factory.mktemp("int8")
    int8 = quantize.quantize_artifact(tiny_artifact[0], synthetic_root, work / "model.onnx", count=40)
    return lambda_package.build_package(tiny_artifact[0], work / "local", platform_name="local", make_zip=False,
                                        int8_model=int8)


def test_an_int8_package_is_smaller_has_int8_weights_and_answers_as_its_model(int8_package, local_package,
                                                                           tiny_artifact):
    """The function serves the int8 model it was built with: what the gateway answers is what the artifact's own
    inference code gives on that model.onnx. Quantised (QDQ): a DequantizeLinear of int8 weights feeds every
    convolution and the classifier."""
    import onnx

    int8_onnx = int8_package.path / "model" / "model.onnx"
    assert lambda_package.read_manifest(int8_package.path)["quantize"] == "int8"
    assert int8_onnx.stat().st_size < 0.4 * (local_package.path / "model" / "model.onnx").stat().st_size
    graph = onnx.load(str(int8_onnx)).graph
    made_by = {out: node for node in graph.node for out in node.output}
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert weighted and all(made_by[n.input[1]].op_type == "DequantizeLinear" for n in weighted)
    int8_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert all(made_by[n.input[1]].input[0] in int8_weights for n in weighted)

    served = gateway.start_local_gateway(mode="lambda", package=int8_package.path, service="int8-gateway")
    try:
        url = served.endpoint_url + gateway.ROUTE
        rows = lambda_modes.compare_answers(url, url, tiny_artifact[1][:8], int8_package.path / "model")
    finally:
        services.stop_service("int8-gateway")
    assert len(rows) == 8 and all(r["in Lambda"] == r["its model, here"] for r in rows), rows


def test_int8_against_float_on_the_same_held_out_images(local_package, synthetic_root, tmp_path):
    from cloudalliance.serving import quantize

    served = local_package.path / "model"
    int8 = quantize.quantize_int8(served, synthetic_root, tmp_path / "int8.onnx", count=40)
    rows = quantize.compare(served, int8, synthetic_root)
    fp32, q = rows
    assert fp32["images"] == q["images"] == len(tiny_images := list((synthetic_root / "seg_test").rglob("*.jpg")))
    assert fp32["agreement"] == 1.0 and 0 <= q["agreement"] <= 1 and q["mb"] < fp32["mb"]
    assert fp32["ci95"][0] <= fp32["accuracy"] <= fp32["ci95"][1]
    text = quantize.verdict(rows)
    serve = fp32["ci95"][0] <= q["accuracy"] <= fp32["ci95"][1] and q["agreement"] >= 0.99
    assert text.endswith("serve int8") == serve and str(len(tiny_images)) in text


def test_int8_needs_calibration_images(tiny_artifact, tmp_path, capsys):
    args = ["lambda", "package", "--artifact", str(tiny_artifact[0]), "--platform", "local", "--out", str(tmp_path / "o")]
    assert cli.main(args + ["--quantize", "int8"]) == 2
    assert "--calibration-data" in capsys.readouterr().err
    assert cli.main(args + ["--quantize", "int8", "--calibration-data", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "o").exists()
    bench = ["bench", "lambda", "--artifact", str(tiny_artifact[0]), "--image", str(tiny_artifact[1][0]),
             "--out", str(tmp_path / "b"), "--quantize", "int8"]
    assert cli.main(bench) == 2 and "--calibration-data" in capsys.readouterr().err
    assert cli.main(bench + ["--calibration-data", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "b").exists()  # refused before anything was written
    # the package's own checks come before the minute of calibration, and a lone --calibration-data is refused
    data = ["--quantize", "int8", "--calibration-data", str(tmp_path)]
    assert cli.main(["lambda", "package", "--artifact", str(tmp_path / "nope.tar.gz")] + data) == 2
    assert "No artifact at" in capsys.readouterr().err
    assert cli.main(["lambda", "package", "--artifact", str(tiny_artifact[0]), "--platform", "local"] + data) == 2
    assert "needs --out" in capsys.readouterr().err
    assert cli.main(args + ["--calibration-data", str(tmp_path)]) == 2


def test_the_mode_record_names_the_model_the_function_served(int8_package, local_package, tiny_artifact):
    image = tiny_artifact[1][0].read_bytes()
    payloads = [calls.image_payload(tiny_artifact[1][0])]
    for package, model in ((int8_package.path, "int8"), (local_package.path, "float32")):
        served = gateway.start_local_gateway(mode="lambda", package=package, service="record-gateway")
        try:
            record = lambda_modes.measure_mode("lambda", served.endpoint_url + gateway.ROUTE, image, payloads,
                                               runs=0, requests=2, package=package, progress=False)
        finally:
            services.stop_service("record-gateway")
        assert record.config["model"] == model and record.sizes["errors"] == 0
        assert lambda_modes.modes_table([record])[0]["model"] == model
    assert lambda_package.read_manifest(int8_package.path)["model_sha256"] != \
        lambda_package.read_manifest(local_package.path)["model_sha256"]
