"""edgecnn's import graph from the source (AST, nothing imported): every module's imports of edgecnn modules and of
third-party packages, at module level and inside functions; cycles; function lengths.

Used by tests/test_layers.py; run as a script (`python tests/import_graph.py [PACKAGE_DIR]`) it prints the numbers
the structure is judged by: import cycles, function-level imports of edgecnn's own modules, the longest functions.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "edgecnn"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. 'edgecnn.runtime.onnxrt'
    target: str  # the imported module: an edgecnn module, or the top-level name of another package ('torch')
    line: int
    in_function: bool  # inside a def (lazy) rather than at module level

    @property
    def internal(self) -> bool:
        return self.target == PACKAGE or self.target.startswith(PACKAGE + ".")


@dataclass
class Graph:
    modules: dict[str, Path]
    imports: list[Import] = field(default_factory=list)
    functions: list[tuple[str, str, int]] = field(default_factory=list)  # (module, qualified name, lines)

    def edges(self, include_function_level: bool = True) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for imp in self.imports:
            if imp.internal and imp.target != imp.source and (include_function_level or not imp.in_function):
                out[imp.source].add(imp.target)
        return out

    def cycles(self, include_function_level: bool = True) -> list[list[str]]:
        """The strongly connected components of more than one module (each holds at least one cycle), sorted."""
        return sorted(sorted(c) for c in _strongly_connected(self.edges(include_function_level)) if len(c) > 1)

    def function_level_internal(self) -> list[Import]:
        return [i for i in self.imports if i.internal and i.in_function]


def module_name(path: Path, package_dir: Path) -> str:
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def build(package_dir: Path = PACKAGE_DIR) -> Graph:
    files = sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)
    graph = Graph(modules={module_name(p, package_dir): p for p in files})
    for name, path in graph.modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        _Visitor(graph, name, is_package).visit(tree)
    return graph


class _Visitor(ast.NodeVisitor):
    def __init__(self, graph: Graph, module: str, is_package: bool):
        self.graph, self.module, self.is_package = graph, module, is_package
        self.depth = 0
        self.scope: list[str] = []

    def _function(self, node) -> None:
        self.scope.append(node.name)
        self.graph.functions.append((self.module, ".".join(self.scope), node.end_lineno - node.lineno + 1))
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def _add(self, target: str, node) -> None:
        if target.startswith(PACKAGE + ".") or target == PACKAGE:
            target = self._known(target)
        else:
            target = target.split(".")[0]
        self.graph.imports.append(Import(self.module, target, node.lineno, self.depth > 0))

    def _known(self, dotted: str) -> str:
        """The longest prefix of `dotted` that is an edgecnn module (`edgecnn.x.func` -> `edgecnn.x`)."""
        parts = dotted.split(".")
        while parts and ".".join(parts) not in self.graph.modules:
            parts.pop()
        return ".".join(parts) or dotted

    def visit_Import(self, node) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node) -> None:
        if node.level:  # relative: resolve against this module's package
            base = self.module.split(".")
            if not self.is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        for alias in node.names:  # `from edgecnn.runtime import onnxrt` imports the submodule
            full = f"{module}.{alias.name}"
            self._add(full if full in self.graph.modules else module, node)


def _strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.add(top)
                        if top == node:
                            break
                    out.append(comp)
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def report(package_dir: Path = PACKAGE_DIR) -> str:
    g = build(package_dir)
    lazy = g.function_level_internal()
    all_lazy = [i for i in g.imports if i.in_function]
    lines = [
        f"modules: {len(g.modules)}",
        f"import cycles (strongly connected groups, function-level imports included): {len(g.cycles())}",
        *[f"  {' <-> '.join(c)}" for c in g.cycles()],
        f"function-level import statements: {_statements(all_lazy)}, of edgecnn's own modules: {_statements(lazy)} "
        f"(names imported: {len(all_lazy)}, {len(lazy)})",
        "longest functions:",
        *[f"  {n:4d}  {m}.{f}" for m, f, n in sorted(g.functions, key=lambda t: -t[2])[:5]],
    ]
    return "\n".join(lines)


def _statements(imports: list[Import]) -> int:
    return len({(i.source, i.line) for i in imports})


if __name__ == "__main__":
    print(report(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR))
