"""The notebooks follow the house rules: one parameters cell of literals, logic in the library, no outputs."""

import ast
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_numbered_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names[:4] == ["01_data_exploration.ipynb", "02_s3_upload.ipynb", "03_training.ipynb", "04_evaluation.ipynb"]
    assert all(re.match(r"^0[1-7]_[a-z0-9_]+\.ipynb$", n) for n in names), names


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def notebook(request):
    return json.loads(request.param.read_text())


def _code(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_exactly_one_parameters_cell_of_upper_case_literals(notebook):
    tagged = [c for c in _code(notebook) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    tree = ast.parse("".join(tagged[0]["source"]))
    assert tree.body, "the parameters cell is empty"
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        name = node.targets[0].id
        assert re.match(r"^[A-Z][A-Z0-9_]*$", name), name
        ast.literal_eval(node.value)  # raises on anything but a literal


def test_no_definitions_or_loops(notebook):
    for cell in _code(notebook):
        tree = ast.parse("".join(cell["source"]))
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For,
                                         ast.While, ast.Lambda)), "".join(cell["source"])


def test_committed_without_outputs(notebook):
    for cell in _code(notebook):
        assert cell.get("outputs") == [] and cell.get("execution_count") is None


def test_runs_on_the_python3_kernel(notebook):
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


def test_each_notebook_keeps_one_short_check(notebook):
    """One visible check per notebook makes nbval able to fail on a wrong result; the rest are out of the lessons,
    in tests/integration/test_course_results.py, which asserts on what a course run recorded."""
    asserts = [n for c in _code(notebook) for n in ast.walk(ast.parse("".join(c["source"]))) if isinstance(n, ast.Assert)]
    assert len(asserts) == 1


ROOT = Path(__file__).resolve().parents[2]


def _python_blocks(notebook: str) -> list[str]:
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("notebook,source", [
    ("03_training.ipynb", "src/cloudalliance/training/sagemaker.py"),
    ("05_deployment.ipynb", "src/cloudalliance/serving/deploy.py"),
    ("06_lambda_api.ipynb", "lambda/src/handler.py"),
])
def test_the_calls_a_notebook_shows_are_the_ones_the_library_makes(notebook, source):
    """The SDK and handler calls shown in a notebook's text name only classes, functions and arguments that the code
    behind it really uses (a shown call cannot drift from the one that runs)."""
    import re

    blocks = _python_blocks(notebook)
    assert blocks, f"{notebook} shows the calls it teaches"
    code = (ROOT / source).read_text()
    if source.endswith("handler.py"):
        code += (ROOT / "lambda" / "src" / "guards.py").read_text()
    names = set()
    for block in blocks:
        names |= set(re.findall(r"\b([A-Za-z_]\w*)\(", block)) | set(re.findall(r"\b([A-Za-z_]\w*)=(?!=)", block))
    ignored = {"dict", "json", "f", "print", "range", "len", "str"}
    missing = sorted(n for n in names - ignored if not re.search(rf"\b{re.escape(n)}\b", code))
    assert not missing, f"{notebook} shows {missing}, which {source} does not use"
