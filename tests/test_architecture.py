"""The house's shape, read from the source with `ast` (function-local imports count, as they run
just the same): no import circle between packages, `host/` stays below the stages, no file over
500 lines, and the run folder's layout spelled in one place (rundir.RunDir)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lora_forge"
MAX_LINES = 500
# host/ holds adapters below the stages: it must not reach up into the use cases, the faces, the
# grid or the trainer (the engine calls the host, never the other way round)
HOST_MUST_NOT_IMPORT = ("app", "ui", "api", "grid", "train")
# names inside a run folder that only rundir.RunDir may spell
RUN_FILES = ("config.toml", "report.json", "loss.jsonl", "-scores.json", "-scores.png", ".preview.png")


def modules() -> dict[str, Path]:
    """Dotted module name → file, for every .py file of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Every lora_forge module `path` imports, anywhere in the file."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    known = modules()
    return {m for m in found if m in known and m != name}


def package_of(module: str) -> str:
    """lora_forge.train.loop → train; lora_forge.project → project; lora_forge → lora_forge."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def graph() -> dict[str, dict[str, set[str]]]:
    """package → imported package → the module edges that make it (for the failure message)."""
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for name, path in modules().items():
        for target in imports_of(name, path):
            a, b = package_of(name), package_of(target)
            if a != b and "lora_forge" not in (a, b):
                edges[a][b].add(f"{name} → {target}")
    return edges


def cycles(edges: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted({*edges, *(w for targets in edges.values() for w in targets)}):
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_function_local_and_relative_imports(tmp_path):
    """The walker must not miss the imports that closed the old circle (inside functions)."""
    found = imports_of("lora_forge.api.train", PACKAGE / "api" / "train.py")
    assert "lora_forge.app.train" in found  # imported inside routes()
    edges = {"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {"a": {"z"}}, "d": {"a": {"w"}}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_import_circle_between_packages():
    edges = graph()
    found = cycles(edges)
    detail = [
        f"{' ⇄ '.join(group)}: "
        + "; ".join(sorted(e for a in group for b in group if b in edges[a] for e in edges[a][b])[:12])
        for group in found
    ]
    assert not found, "import circles between packages:\n" + "\n".join(detail)


def test_host_imports_nothing_above_it():
    edges = graph()
    wrong = sorted(e for b in HOST_MUST_NOT_IMPORT for e in edges.get("host", {}).get(b, ()))
    assert not wrong, "host/ reaches up into " + "; ".join(wrong)


def test_no_file_over_500_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these before they grow further: {long}"


def test_the_run_folder_layout_is_spelled_once():
    """Every path inside a run comes from rundir.RunDir: its file names are written there only."""
    spelled = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                spelled[node.value].append(str(path.relative_to(PACKAGE)))
    assert spelled["config.toml"] == ["rundir.py"], spelled
    assert all(places == ["rundir.py"] for places in spelled.values()), dict(spelled)


def test_no_code_asks_a_host_its_name():
    """What differs between hosts is a Host method (host/base.py), not a check of which host it is."""
    asked = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "host":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("webui", "standalone"):
                asked.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not asked, asked
