"""The import graph of gpuconv, read from the source with ``ast``: imports at module level and
inside functions alike. It has no cycles, no module takes a private name (``_name``) of another
module, and the library never imports the command-line tools (``gpuconv.tools``; ``python -m
gpuconv`` is the command, not the library)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import gpuconv

ROOT = Path(gpuconv.__file__).resolve().parent


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_names(root: Path, package: str) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root`` (a package named ``package``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package] + parts)] = path
    return out


def import_graph(root: Path, package: str) -> Tuple[Dict[str, Set[str]], List[str]]:
    """(edges: module -> the package modules it imports, problems: private names taken from
    another module). ``from m import x`` is an edge to ``m.x`` when that is a module, else to ``m``;
    a package is not counted as imported by importing one of its submodules."""
    modules = module_names(root, package)
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    problems: List[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        bound: Set[str] = set()        # local names bound to package modules
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        graph[name].add(alias.name)
                        bound.add(alias.asname or alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source not in modules:
                    continue
                for alias in node.names:
                    target = f"{source}.{alias.name}"
                    if target in modules:
                        graph[name].add(target)
                        bound.add(alias.asname or alias.name)
                        continue
                    graph[name].add(source)
                    if _is_private(alias.name) and source != name:
                        problems.append(f"{name} imports private {alias.name} from {source} "
                                        f"({path.name}:{node.lineno})")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and _is_private(node.attr)):
                where = f"{path.name}:{node.lineno}"
                problems.append(f"{name} uses private {node.value.id}.{node.attr} ({where})")
        graph[name].discard(name)
    return graph, problems


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none (depth-first search)."""
    state: Dict[str, int] = {}          # 1: on the current path, 2: finished
    path: List[str] = []

    def visit(m: str) -> List[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def test_gpuconv_has_no_import_cycle():
    graph, _ = import_graph(ROOT, "gpuconv")
    assert find_cycle(graph) == []


def test_no_module_takes_a_private_name_of_another():
    _, problems = import_graph(ROOT, "gpuconv")
    assert problems == []


def test_the_library_does_not_import_the_tools():
    graph, _ = import_graph(ROOT, "gpuconv")
    library = [m for m in graph if not m.startswith("gpuconv.tools") and m != "gpuconv.__main__"]
    assert {m: sorted(t for t in graph[m] if t.startswith("gpuconv.tools")) for m in library} == \
        {m: [] for m in library}


def test_the_graph_sees_imports_inside_functions_and_private_names(tmp_path):
    """A planted cycle (one side importing inside a function) and private imports are found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n\ndef _hidden():\n    pass\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import _hidden\n    return _hidden\n")
    (pkg / "c.py").write_text("from . import a\n\na._hidden()\n")
    graph, problems = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert sorted(p.split(" (")[0] for p in problems) == ["pkg.c uses private a._hidden",
                                                           "pkg.sub.b imports private _hidden from pkg.a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    graph, _ = import_graph(pkg, "pkg")
    assert find_cycle(graph) == []
