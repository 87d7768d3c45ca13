"""Print which of prelabel's subpackages import which, at module level: `python docs/deps.py`.

Used to keep docs/architecture.md true: the picture there is this output, read as layers.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "prelabel"


def unit(module: str) -> str:
    """A subpackage (``llm``), or a top-level module (``config``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "prelabel"


def module_imports(path: Path) -> set[str]:
    """Absolute names of the prelabel modules a file imports at module level (not inside functions)."""
    rel = path.relative_to(ROOT.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("prelabel"):
                found.add(name)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("prelabel"))
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        me = unit(".".join(rel.parts))
        for target in module_imports(path):
            other = unit(target)
            if other != me and other != "prelabel":
                edges[me].add(other)
            elif other == "prelabel" and target.count(".") >= 1:
                edges[me].add(target.split(".")[1])
        edges.setdefault(me, set())
    for k in edges:
        edges[k].discard(k)
    return edges


def main() -> int:
    for name, targets in sorted(graph().items(), key=lambda kv: (len(kv[1]), kv[0])):
        print(f"{name:<10} -> {', '.join(sorted(targets)) or '(nothing)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
