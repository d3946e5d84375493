"""The README's reading guide names files and functions that exist, with their sizes (within a fifth)."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def guide_rows():
    text = (ROOT / "README.md").read_text()
    start = text.index("### Reading the code\n")
    body = text.index("\n", start)
    end = body + re.search(r"^#{1,3} ", text[body:], re.M).start()  # the guide ends at the next heading
    guide = text[start:end]
    rows = [line for line in guide.splitlines() if re.match(r"\| 0\d \|", line)]
    assert len(rows) == 7, "one row per notebook"
    return rows


def refs(row: str):
    """(file, function or None, stated lines) in reading order; a bare `name` (n) belongs to the last file."""
    current = None
    for m in re.finditer(r"`((?:src/cloudalliance|lambda/src)/[\w/]+\.py)`(?: \((\d+)\))?|`(\w+)` \((\d+)\)", row):
        if m.group(1):
            current = ROOT / m.group(1)
            if m.group(2):
                yield current, None, int(m.group(2))
        else:
            yield current, m.group(3), int(m.group(4))


def test_every_file_and_function_in_the_guide_exists_at_about_its_size():
    checked = 0
    for row in guide_rows():
        for path, name, stated in refs(row):
            assert path.is_file(), f"{path} named in the reading guide does not exist"
            text = path.read_text()
            if name is None:
                actual = len(text.splitlines())
            else:
                nodes = [n for n in ast.parse(text).body if getattr(n, "name", None) == name]
                assert nodes, f"{name} is not defined in {path.relative_to(ROOT)}"
                actual = nodes[0].end_lineno - nodes[0].lineno + 1
            assert abs(actual - stated) <= max(3, stated // 5), \
                f"the guide says {path.relative_to(ROOT)} {name or ''} is {stated} lines; it is {actual}"
            checked += 1
    assert checked >= 25


def test_the_guide_names_each_stage_package_that_exists():
    text = (ROOT / "README.md").read_text()
    for package in ("data", "storage", "training", "serving", "api", "bench", "local"):
        init = ROOT / "src" / "cloudalliance" / package / "__init__.py"
        assert init.is_file() and init.read_text().strip(), f"{package}/__init__.py says what the stage teaches"
        assert f"{package}/" in text
