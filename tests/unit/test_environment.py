"""environment.yml (SageMaker notebook instances, conda) and pyproject.toml (pip) must agree."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject():
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return doc["dependencies"] + doc["optional-dependencies"]["dev"]


def _conda_pip():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [p for p in pip if not p.startswith("-")], env


def test_same_packages_and_versions():
    pip, _ = _conda_pip()
    assert {_name(r): r.replace(" ", "") for r in _pyproject()} == {_name(r): r.replace(" ", "") for r in pip}


def test_the_conda_environment_installs_the_tested_versions():
    """pip takes ``-c FILE`` lines in the requirements file conda writes from the ``pip:`` list, and runs from the
    environment file's folder, as ``-e .`` there already relies on."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-c requirements/constraints.txt" in pip and (REPO / "requirements" / "constraints.txt").is_file()


def _pins() -> dict[str, str]:
    lines = (REPO / "requirements" / "constraints.txt").read_text().splitlines()
    return {_name(line): line.strip() for line in lines if "==" in line and not line.startswith("#")}


def test_pip_under_conda_takes_the_constraints_relative_to_the_environment_file(tmp_path, monkeypatch):
    """What `conda env create -f environment.yml` does with the ``pip:`` list: it writes it to a temporary
    ``condaenv.*.requirements.txt`` in the environment file's folder and runs ``pip install -r`` on it from there
    (conda/env/installers/pip.py, ``install`` and ``_pip_install_via_requirements``). pip joins a nested ``-c``
    path to the folder of the file that names it (pip/_internal/req/req_file.py:356-362), so every pin of
    requirements/constraints.txt reaches pip as a constraint, whatever the current folder."""
    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import parse_requirements

    packages, env = _conda_pip()
    folder = tmp_path / "checkout"  # the environment file's folder, with the repository's requirements/ in it
    folder.mkdir()
    (folder / "requirements").symlink_to(REPO / "requirements")
    written = folder / "condaenv.abc123.requirements.txt"
    written.write_text("\n".join(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))))
    monkeypatch.chdir(tmp_path)  # not the file's folder: the nested path must not depend on it
    parsed = list(parse_requirements(str(written), session=PipSession()))
    constraints = {_name(r.requirement): r.requirement for r in parsed if r.constraint}
    pins = _pins()
    assert {_name(p): constraints.get(_name(p)) for p in packages} == {_name(p): pins[_name(p)] for p in packages}


def test_python_and_torch_pins():
    _, env = _conda_pip()
    assert "python=3.11" in env["dependencies"]
    deps = _pyproject()
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_constraints_pin_what_pyproject_asks_for():
    pinned = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pinned[_name(name)] = version.strip()
    missing = sorted(_name(r) for r in _pyproject() if _name(r) not in pinned)
    assert not missing, f"not in requirements/constraints.txt (run `make lock`): {missing}"
    assert pinned["torch"] == "2.14.1" and pinned["torchvision"] == "0.29.1"
