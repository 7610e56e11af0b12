"""The house's plan, checked: no module imports one that imports it back (also from inside a function,
where a circle hides until the call), and every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

SRC = ROOT / "src"


def module_names() -> dict[str, Path]:
    names = {}
    for file in sorted(SRC.rglob("*.py")):
        parts = file.relative_to(SRC).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return names


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, file: Path, known: dict[str, Path]) -> set[str]:
    """The seal modules `name` imports anywhere in its body (functions included), except under `if
    TYPE_CHECKING:`, which never runs."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(head + ([node.module] if node.module else []))
            for alias in node.names:  # `from seal.core import objectives` imports a module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(file.read_text()))
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_checker_finds_a_circle_through_a_function_level_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import f\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from pkg import a\n")
    (tmp_path / "pkg" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n")
    known = {f"pkg.{n}": tmp_path / "pkg" / f"{n}.py" for n in "abc"}
    graph = {n: imports_of(n, f, known) for n, f in known.items()}
    assert graph["pkg.c"] == set()
    assert circles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_circles():
    known = module_names()
    graph = {name: imports_of(name, file, known) for name, file in known.items()}
    found = circles(graph)
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_module_imports_on_its_own():
    """Each module in an interpreter that has no seal module loaded yet (the libraries stay loaded, so
    that this takes seconds): an import that only works after another module ran first fails here."""
    script = (
        "import importlib, sys, torch, transformers, peft, pydantic, typer\n"
        f"names = {sorted(module_names())!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'seal' or m.startswith('seal.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_the_core_speaks_no_domain_s_words():
    """core/ is domain-independent: no string in its code names a section only a domain has or what a
    domain's contexts are (a domain declares such things on its plugin: context_alone, round1_free,
    samples_free, contexts_word). Docstrings and comments may use them as examples."""
    words = {"answer", "judge", "cpt", "continual", "questions", "learn", "predict", "curate",
             "passage", "passages", "task", "tasks"}
    found = []
    for file in sorted((SRC / "seal" / "core").glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in words:
                found.append(f"{file.name}:{node.lineno} {node.value!r}")
    assert not found, found
