"""Would pip, inside SageMaker's PyTorch 2.6.0 containers, change what the image already ships?

The training job runs in the PyTorch 2.6.0 py312 training image, where pip installs the source's
``requirements.txt`` (``training.sagemaker.source_bundle``). The endpoint runs in the 2.6.0 py312 inference image,
where the toolkit pip-installs ``code/requirements.txt`` of ``model.tar.gz`` (``serving.model_artifact.package_model``).
Each file is built by those functions and handed to pip's resolver (``--dry-run --report``) for the image's
Python and platform, with the image's package list as constraints. The test fails when:

- pip finds no resolution that keeps the image's pinned versions (pip's message names the conflict), or it would
  still install one of those packages at another version;
- the file pins a package that the image ships at a version the sources do not give, so pip would replace the
  image's own copy;
- pip would add a package that the image does not have, without a pin, so the container would get whatever is
  newest that day.

The image lists (requirements/images/, whose README says what they hold and what they lack) come from
github.com/aws/deep-learning-containers:

- training, @ dd3ba4642def128f9644025522d722cec3b713e9: pytorch/training/docker/2.6/py3/Dockerfile.cpu,
  cu126/Dockerfile.gpu, Dockerfile.sagemaker.*.core_packages.json, pytorch/training/buildspec-2-6-sm.yml;
- inference, @ a70e18c87888b7398c1ba66de77c0c5dc4e61614: pytorch/inference/docker/2.6/py3/Dockerfile.cpu,
  cu124/Dockerfile.gpu, Dockerfile.sagemaker.*.core_packages.json, pytorch/inference/buildspec-2-6-sm.yml;
- github.com/pytorch/serve v0.12.0 requirements/common.txt, which the inference Dockerfiles install.

This needs PyPI. When PyPI cannot be reached, the resolver tests skip. A resolution takes a few seconds: AWS's
torch builds are not on PyPI, so pip never downloads torch for them.
"""

import json
import os
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

IMAGES = Path(__file__).resolve().parents[2] / "requirements" / "images"
PYPI = "https://pypi.org/simple"

# The images' Python and platform, for pip (which then ignores this machine's) and for environment markers.
PIP_TARGET = ["--python-version", "3.12", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
              "--platform", "manylinux_2_17_x86_64", "--only-binary", ":all:"]
MARKERS = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.8", "os_name": "posix",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def read_image_list(path: Path) -> tuple[dict[str, str], set[str]]:
    """``(pinned, unknown)``: name -> version of the ``==`` lines; the names the image has at an unknown version."""
    pinned, unknown = {}, set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pinned[canonicalize_name(name)] = version.strip()
        elif line:
            unknown.add(canonicalize_name(line))
    return pinned, unknown


def requires(item: dict) -> list[Requirement]:
    """What a package of pip's report depends on in the image (its Python and platform, no extras)."""
    reqs = map(Requirement, item["metadata"].get("requires_dist") or [])
    return [r for r in reqs if not r.marker or r.marker.evaluate(MARKERS)]


def problems(report: dict, pinned: dict[str, str], unknown: set[str]) -> list[str]:
    """What installing pip's ``--report`` would do wrong in an image with these packages, one line each."""
    install = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
    out = []
    for name, item in install.items():
        version = item["metadata"]["version"]
        if name in pinned and Version(version) != Version(pinned[name]):
            out.append(f"{name}: pip would install {version}, the image has {pinned[name]}")
        if name in unknown and item["requested"]:
            out.append(f"{name}=={version} is pinned, but the image ships its own {name}: pip would replace it")
    # Walk from the requested packages through the dependencies the image lacks: in the container, pip installs
    # each of those at the newest version that fits, unless the file pins it.
    todo, seen = [n for n, i in install.items() if i["requested"]], set()
    while todo:
        for req in requires(install[todo.pop()]):
            name = canonicalize_name(req.name)
            if name in seen or name in pinned or name in unknown:
                continue
            seen.add(name)
            todo.append(name)
            if not install[name]["requested"]:
                out.append(f"{name}: the image lacks it and the file does not pin it (pip would take "
                           f"{install[name]['metadata']['version']}, the newest that fits today)")
    return out


def stub_wheel(folder: Path, name: str, version: str) -> None:
    """An empty wheel for ``name==version``, standing in for one of AWS's own builds that PyPI does not have."""
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}.dist-info/RECORD", "")


def resolve(requirements: Path, image: Path, work: Path) -> dict:
    """pip's report for installing ``requirements`` into ``image`` (a dry run: nothing is installed)."""
    stubs = work / "image-builds"
    stubs.mkdir()
    for name, version in read_image_list(image)[0].items():
        if "+" in version:  # a local version label: AWS's build (torch 2.6.0+cpu), never on PyPI
            stub_wheel(stubs, name, version)
    # Only the network settings pass; the project's own pip settings (its constraints, wheel folders, extra
    # indexes) have no place in the image's resolution.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_PROXY")}
    env["PIP_CONFIG_FILE"] = os.devnull
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
           "--report", str(work / "report.json"), "--target", str(work / "target"), *PIP_TARGET,
           "--index-url", PYPI, "--find-links", str(stubs), "-c", str(image), "-r", str(requirements),
           "--no-input", "--progress-bar", "off", "--disable-pip-version-check"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, (f"pip finds no way to install {requirements.name} into {image.name}:\n"
                                  f"{(done.stdout + done.stderr)[-3000:]}")
    return json.loads((work / "report.json").read_text())


@pytest.fixture(scope="module")
def pypi():
    try:
        urllib.request.urlopen(urllib.request.Request(f"{PYPI}/pip/", method="HEAD"), timeout=5).close()
    except OSError as e:
        pytest.skip(f"PyPI ({PYPI}) is not reachable ({e}): the containers' requirements are not resolved")


@pytest.fixture(scope="module")
def container_requirements(tmp_path_factory) -> dict[str, Path]:
    """The two files the course writes: the training source's requirements.txt, the artifact's code/requirements.txt."""
    from cloudalliance.serving import model_artifact
    from cloudalliance.training.sagemaker import source_bundle

    folder = tmp_path_factory.mktemp("requirements")
    training = source_bundle(folder / "source") / "requirements.txt"
    model = folder / "model"
    model.mkdir()
    for name in (*model_artifact.ARTIFACT_FILES, "model.onnx"):
        (model / name).write_text("{}")
    with pytest.MonkeyPatch.context() as mp:  # no trained network here: only code/requirements.txt is wanted
        mp.setattr(model_artifact, "export_onnx", lambda model_dir: model / "model.onnx")
        artifact, _ = model_artifact.package_model(model, folder / "model.tar.gz")
    inference = folder / "code-requirements.txt"
    with tarfile.open(artifact) as tar:
        inference.write_bytes(tar.extractfile("code/requirements.txt").read())
    return {"training": training, "inference": inference}


@pytest.mark.parametrize("image", ["training-2.6.0-py312-cpu", "training-2.6.0-py312-gpu",
                                   "inference-2.6.0-py312-cpu", "inference-2.6.0-py312-gpu"])
def test_pip_keeps_what_the_image_ships(image, pypi, container_requirements, tmp_path):
    requirements = container_requirements[image.split("-")[0]]
    image_list = IMAGES / f"{image}.txt"
    report = resolve(requirements, image_list, tmp_path)
    pinned, unknown = read_image_list(image_list)
    # What the requested packages need of the image's unknown versions: the image's copy stays if it meets that.
    needs = {}
    for item in (i for i in report["install"] if i["requested"]):
        for req in requires(item):
            if canonicalize_name(req.name) in unknown and req.specifier:
                needs.setdefault(canonicalize_name(req.name), []).append(f"{item['metadata']['name']} {req.specifier}")
    print(f"\n{requirements.read_text().split()} in {image}: pip would install")
    for item in report["install"]:
        name, version = canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"]
        where = ("requested" if item["requested"] else "image's pin" if name in pinned
                 else "in the image, version unknown" if name in unknown else "added")
        print(f"  {name}=={version}  ({where}{''.join(f'; {n}' for n in needs.get(name, []))})")
    found = problems(report, pinned, unknown)
    assert not found, f"{requirements.name} in {image}:\n" + "\n".join(found)


def _item(name, version, requested=False, requires=()):
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}, "requested": requested}


def test_problems_names_each_package_pip_would_change():
    report = {"install": [
        _item("onnx", "1.23.2", True, ["protobuf>=6.31.1", "ml_dtypes>=0.5.4", "numpy>=1.23",
                                       'colorama; platform_system == "Windows"']),  # never in a Linux image
        _item("pillow", "13.0.0", True),
        _item("protobuf", "7.0.0"),
        _item("ml_dtypes", "0.7.0", requires=["numpy>=2"]),
        _item("numpy", "2.4.6"),
        _item("colorama", "0.4.6"),
    ]}
    found = problems(report, {"protobuf": "6.33.4"}, {"pillow", "numpy"})
    assert sorted(line.split(":")[0].split("==")[0] for line in found) == ["ml-dtypes", "pillow", "protobuf"], found
    # pinning what pip adds, and leaving out what the image ships, settles it
    report["install"][1:4] = [_item("protobuf", "6.33.4"), _item("ml_dtypes", "0.6.0", True, ["numpy>=2"])]
    assert problems(report, {"protobuf": "6.33.4"}, {"pillow", "numpy"}) == []
