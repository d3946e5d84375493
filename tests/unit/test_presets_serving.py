"""code/inference.py's errors inside the real SageMaker inference toolkit (and without it).

The toolkit's ``Transformer.transform`` answers ``BaseInferenceToolkitError.status_code`` for its own errors
and HTTP 500 for any other exception (sagemaker_inference/transformer.py, ``transform``'s ``except``
block, aws/sagemaker-inference-toolkit @ f79853d lines 159-168; ``GenericInferenceToolkitError`` in
sagemaker_inference/errors.py lines 54-71). The test runs that very ``transform`` with the artifact's handler
functions; only the model server's per-request context object is a stand-in.
"""

import importlib.util
import io
import shutil
import struct
import json
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cloudalliance"


def bomb_png(side: int = 12000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    idat = zlib.compress(b"\0" * (side + 1) * 16)  # only the header matters here: it is refused before decoding
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def load_inference(tmp_path: Path, name: str):
    """code/inference.py with code/presets.py beside it, as in model.tar.gz."""
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    shutil.copy(SRC / "serving" / "artifact_code" / "inference.py", code / "inference.py")
    shutil.copy(SRC / "presets.py", code / "presets.py")
    spec = importlib.util.spec_from_file_location(name, code / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Context:
    """The model server's request context, as much of it as ``Transformer.transform`` reads."""

    def __init__(self, content_type: str, accept: str = "application/json"):
        self.system_properties = {"model_dir": "/opt/ml/model"}
        headers = {"Content-Type": content_type, "Accept": accept}
        self.request_processor = [SimpleNamespace(get_request_properties=lambda: headers)]
        self.status = (200, "")
        self.content_type = None

    def set_response_status(self, code, phrase):
        self.status = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_type = value


@pytest.fixture
def transformer_for(tmp_path):
    transformer_mod = pytest.importorskip("sagemaker_inference.transformer")

    def make(module):
        from cloudalliance.presets import Preprocess

        t = transformer_mod.Transformer()
        t._initialized = True  # validate_and_initialize would import the module from SAGEMAKER_PROGRAM
        t._environment = SimpleNamespace(default_accept="application/json")
        t._model = {"preprocess": Preprocess(size=48), "classes": ["a", "b"], "session": None, "input": "image"}
        t._input_fn, t._predict_fn, t._output_fn = module.input_fn, module.predict_fn, module.output_fn
        t._transform_fn = t._default_transform_fn
        return t

    return make


@pytest.mark.parametrize("body, content_type, status", [
    (b"hello", "text/plain", 415),
    (b"not an image at all", "image/jpeg", 415),
    (bomb_png(), "image/png", 413),
    (b"\xff\xd8\xff" + b"0" * (6 * 1024 * 1024 + 1), "image/jpeg", 413),
])
def test_the_toolkit_answers_4xx_not_500(transformer_for, tmp_path, body, content_type, status):
    module = load_inference(tmp_path, "inference_with_toolkit")
    ctx = _Context(content_type)
    transformer_for(module).transform([{"body": body}], ctx)
    assert ctx.status[0] == status, ctx.status
    assert ctx.status[1] in ("Unsupported Media Type", "Request Entity Too Large", "Content Too Large")


def test_without_the_toolkit_the_error_is_a_plain_value_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sagemaker_inference", None)  # import fails as in the local endpoint
    monkeypatch.setitem(sys.modules, "sagemaker_inference.errors", None)
    module = load_inference(tmp_path, "inference_without_toolkit")
    with pytest.raises(module.UnsupportedInput) as info:
        module.input_fn(b"x" * (module.MAX_IMAGE_BYTES + 1), "image/png")
    assert info.value.status == 413 and "limit" in str(info.value) and isinstance(info.value, ValueError)
    assert [c.__name__ for c in type(info.value).__mro__[1:3]] == ["ValueError", "Exception"]
    from cloudalliance.presets import Preprocess

    with pytest.raises(module.UnsupportedInput) as info:
        module.predict_fn(bomb_png(), {"preprocess": Preprocess(size=48)})
    assert info.value.status == 413 and "12000x12000" in str(info.value)


@pytest.mark.parametrize("accept, status, content_type", [
    ("application/json", 200, "application/json"),
    ("*/*", 200, "application/json"),
    ("text/html, application/json;q=0.9", 200, "application/json"),
    ("text/csv", 406, None),
])
def test_the_toolkit_labels_the_answer_json_and_refuses_an_accept_without_it(transformer_for, tmp_path, accept,
                                                                            status, content_type):
    """sagemaker_inference's Transformer.transform labels the response with the request's Accept unless output_fn
    returns (body, content type): JSON must not go out as text/csv."""

    import numpy as np
    from PIL import Image

    module = load_inference(tmp_path, "inference_accept")
    buf = io.BytesIO()
    Image.new("RGB", (60, 40), (20, 140, 40)).save(buf, "JPEG")
    transformer = transformer_for(module)
    transformer._model["session"] = SimpleNamespace(run=lambda _, feeds: [np.array([[2.0, 0.5]], np.float32)])
    ctx = _Context("image/jpeg", accept)
    reply = transformer.transform([{"body": buf.getvalue()}], ctx)
    assert ctx.status[0] == status, ctx.status
    if status == 200:
        assert ctx.content_type == content_type and json.loads(reply[0])["label"] == "a"
