"""The house's structure, read from the code's own imports: no module imports back into a module that
imports it (no circle), the layers point one way (benchmarks -> gzfast -> shard_tools), and gzfast uses
only shard_tools' reader modules (shard_tools' packer, synth and CLI are not training's business)."""
import ast
from pathlib import Path

from helpers import REPO

PACKAGES = ("shard_tools", "gzfast", "benchmarks")
# What gzfast may import of shard_tools: the reading side of a packed set, the shared errors, and the reading
# of input files by type (prediction reads unpacked images as pack does).
GZFAST_MAY_IMPORT = {"shard_tools.schema", "shard_tools.trees", "shard_tools.layout", "shard_tools.errors",
                     "shard_tools.ids", "shard_tools.images", "shard_tools.objstore", "shard_tools.inputs"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Project modules that `path` imports (absolute, or relative resolved against its package)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    modules = {module_name(p): p for p in files}
    return {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}


def test_no_import_circles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_layers_point_one_way():
    rank = {"shard_tools": 0, "gzfast": 1, "benchmarks": 2}
    for m, deps in graph().items():
        for d in deps:
            assert rank[d.split(".")[0]] <= rank[m.split(".")[0]], f"{m} imports {d}: an arrow that runs back up"
            if m.startswith("gzfast") and d.startswith("shard_tools") and d != "shard_tools":
                assert d in GZFAST_MAY_IMPORT, f"{m} imports {d}"
