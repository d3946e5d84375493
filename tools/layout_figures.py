#!/usr/bin/env python3
"""The library's layout in figures: what a learner walks, measured from the source with ast.

Run from the project root: ``python tools/layout_figures.py [--root DIR] [--json]``. It prints
- module count and total lines of ``src/cloudalliance`` + ``lambda/src``, the largest module, the longest function,
  the Lambda handler's length, import cycles (imports inside functions count), and how often the default region and
  endpoint name are written as literals;
- for notebooks 03 and 06, the lines a learner reads from the notebook's calls to the work done: every function or
  class reached from the notebook's code through calls, followed across modules (and into the entry script, the
  endpoint server and the Lambda handler where a call starts them as a process), counted once. ``machinery`` is the
  part of it in the layer a learner may skip (``local/``, ``lambda/src/guards.py``, the embedded S3 server).

``--root`` measures another checkout (a ``git worktree`` of an older commit) the same way, for before/after figures.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from collections import defaultdict
from pathlib import Path

# the layer a learner may skip; cloudalliance.services is where it lived before the stage packages (--root of an
# older checkout)
MACHINERY = ("cloudalliance.local", "lambda.guards", "cloudalliance.storage.server", "cloudalliance.services")


def modules(root: Path) -> dict[str, Path]:
    pkg = root / "src"
    found = {".".join(p.relative_to(pkg).with_suffix("").parts).removesuffix(".__init__"): p
             for p in sorted((pkg / "cloudalliance").rglob("*.py"))}
    found.update({f"lambda.{p.stem}": p for p in sorted((root / "lambda" / "src").glob("*.py"))})
    return found


def resolve_from(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class Index:
    """Every top-level function and class of every module, and the names each module and function imports."""

    def __init__(self, root: Path):
        self.files = modules(root)
        self.defs: dict[str, ast.AST] = {}  # "module:name" -> node
        self.binds: dict[str, dict[str, str]] = {}  # "module" or "module:name" -> local name -> target
        self.trees = {m: ast.parse(p.read_text()) for m, p in self.files.items()}
        for mod, tree in self.trees.items():
            self.binds[mod] = self._imports(mod, tree.body)
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    self.defs[f"{mod}:{node.name}"] = node
                    self.binds[f"{mod}:{node.name}"] = self._imports(mod, list(ast.walk(node)))

    def _imports(self, mod: str, nodes) -> dict[str, str]:
        out, is_pkg = {}, self.files[mod].name == "__init__.py"
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                base = resolve_from(mod, is_pkg, node)
                for a in node.names:
                    out[a.asname or a.name] = f"{base}.{a.name}" if f"{base}.{a.name}" in self.files else f"{base}:{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        if mod.startswith("lambda."):  # the handlers import their siblings by name
            out.update({name: f"lambda.{name}" for name in ("guards", "handler") if name in out})
        return out

    def target(self, ref: str) -> str | None:
        """A "module:name" that is defined (following re-exports one step), or None."""
        for _ in range(3):
            if ref in self.defs:
                return ref
            mod, _, name = ref.partition(":")
            ref = self.binds.get(mod, {}).get(name, "")
            if ":" not in ref:
                return None
        return None

    def calls(self, key: str) -> set[str]:
        mod = key.partition(":")[0]
        binds = {**self.binds.get(mod, {}), **self.binds.get(key, {})}
        out = set()
        for node in ast.walk(self.defs[key]):
            if isinstance(node, ast.Call) or isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                out |= self.refs(node.func if isinstance(node, ast.Call) else node, mod, binds)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                out |= self.refs(node, mod, binds)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                out |= self.started(node.value)
        return out

    def refs(self, func, mod: str, binds: dict[str, str]) -> set[str]:
        if isinstance(func, ast.Name):
            t = self.target(f"{mod}:{func.id}") or (self.target(binds[func.id]) if ":" in binds.get(func.id, "") else None)
            return {t} if t else set()
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            base = binds.get(func.value.id, "")
            t = self.target(f"{base}:{func.attr}") if base in self.files else None
            return {t} if t else set()
        return set()

    def started(self, text: str) -> set[str]:
        """A process started by module name (``-m cloudalliance.training``) or a handler loaded by file name."""
        out = set()
        m = re.fullmatch(r"cloudalliance(\.[a-z_.]+)?", text)
        if m and text in self.files:
            for entry in ("main", "serve_main"):
                main = self.target(f"{text}:{entry}") or self.target(f"{text}.__main__:{entry}")
                if main:
                    out.add(main)
            if f"{text}.__main__" in self.files:
                out |= {t for t in (self.target(f"{text}.__main__:{n}") for n in self.binds[f"{text}.__main__"]) if t}
        if text.endswith(("handler.py", "handler_onnx.py")) or text in ("handler.lambda_handler", "handler_onnx.lambda_handler"):
            name = text.split("/")[-1].removesuffix(".py").split(".")[0]
            out |= {t for t in (self.target(f"lambda.{name}:lambda_handler"),) if t}
        return out


def notebook_roots(index: Index, notebook: Path) -> set[str]:
    code = "\n".join("\n".join(line for line in "".join(c["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
                     for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
    tree = ast.parse(code)
    binds = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cloudalliance"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                binds[a.asname or a.name] = full if full in index.files else f"{node.module}:{a.name}"
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in binds:
            t = index.target(f"{binds[node.value.id]}:{node.attr}")
            roots |= {t} if t else set()
        elif isinstance(node, ast.Name) and ":" in binds.get(node.id, ""):
            t = index.target(binds[node.id])
            roots |= {t} if t else set()
    return roots


def reach(index: Index, roots: set[str]) -> dict[str, int]:
    seen, todo = set(), list(roots)
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        todo += index.calls(key)
    return {k: index.defs[k].end_lineno - index.defs[k].lineno + 1 for k in seen}


def cycles(index: Index) -> list[list[str]]:
    graph = defaultdict(set)
    for key, names in index.binds.items():
        mod = key.partition(":")[0]
        for target in names.values():
            t = target.partition(":")[0]
            while t and t not in index.files:
                t = t.rpartition(".")[0]
            if t and t != mod and not mod.startswith(t + ".") and t != "cloudalliance":
                graph[mod].add(t)
    index_of, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index_of[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index_of:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index_of[w])
        if low[v] == index_of[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(index.files):
        if v not in index_of:
            strong(v)
    return out


def figures(root: Path) -> dict:
    index = Index(root)
    sizes = {m: len(p.read_text().splitlines()) for m, p in index.files.items()}
    funcs = [(n.end_lineno - n.lineno + 1, f"{m}:{n.name}") for m, tree in index.trees.items() for n in ast.walk(tree)
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    texts = [p.read_text() for p in index.files.values()]
    handler = root / "lambda" / "src" / "handler.py"
    out = {"modules": len(sizes), "lines": sum(sizes.values()), "largest_module": max(sizes.items(), key=lambda kv: kv[1]),
           "modules_over_500": sorted(m for m, n in sizes.items() if n > 500),
           "longest_function": max(funcs), "functions_over_80": sorted(f for n, f in funcs if n > 80),
           "handler_lines": len(handler.read_text().splitlines()) if handler.exists() else 0,
           "import_cycles": cycles(index),
           "region_literals": sum(t.count('"us-east-1"') + t.count("'us-east-1'") for t in texts)}
    for nb in ("03_training", "06_lambda_api"):
        reached = reach(index, notebook_roots(index, root / "notebooks" / f"{nb}.ipynb"))
        machinery = {k: n for k, n in reached.items() if k.startswith(MACHINERY)}
        out[f"reading_{nb}"] = {"lines": sum(reached.values()), "files": len({k.partition(':')[0] for k in reached}),
                                "functions": len(reached), "machinery_lines": sum(machinery.values()),
                                "lesson_lines": sum(reached.values()) - sum(machinery.values())}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="the checkout to measure (default: here)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = figures(Path(args.root).resolve())
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for key, value in out.items():
        print(f"{key:<20} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
