"""Draw medllm's package-level import graph (docs/import_graph.png): which package imports which.

    python docs/import_graph.py                      # the installed (or checked-out) medllm
    python docs/import_graph.py --out other.png      # PYTHONPATH=<another checkout>/src for another version

Every import counts, those inside functions too (grimp, the graph import-linter checks). Packages are
drawn in layers, each above everything it imports; packages that import each other in a circle share a
layer and their edges are red. ``medllm.errors`` (the exception classes, which every package may raise) is
left out.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import grimp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def package_graph(root: str = "medllm") -> tuple[dict[str, set[str]], dict[str, int]]:
    """``{package: packages it imports}`` and each package's lines of code."""
    graph = grimp.build_graph(root)
    module = __import__(root)
    base = Path(module.__file__).parent

    def package(name: str) -> str:
        parts = name.split(".")
        return parts[1] if len(parts) > 1 else "__init__"

    edges: dict[str, set[str]] = defaultdict(set)
    for name in graph.modules:
        for imported in graph.find_modules_directly_imported_by(name):
            if package(imported) != package(name):
                edges[package(name)].add(package(imported))
    lines: dict[str, int] = defaultdict(int)
    for path in base.rglob("*.py"):
        relative = path.relative_to(base).parts
        name = relative[0].removesuffix(".py") if relative[0] != "__init__.py" else "__init__"
        lines[name] += len(path.read_text().splitlines())
    for name in lines:
        edges.setdefault(name, set())
    for leaf in ("__init__", "errors"):  # errors: the exception classes every package raises, drawn apart
        edges.pop(leaf, None)
        lines.pop(leaf, None)
        for targets in edges.values():
            targets.discard(leaf)
    return dict(edges), dict(lines)


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components: packages that reach each other."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            found.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layers(edges: dict[str, set[str]]) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Each package's layer (0: imports nothing of medllm) and the edges that close a circle."""
    components = strongly_connected(edges)
    of = {v: i for i, c in enumerate(components) for v in c}
    depth: dict[int, int] = {}

    def height(c: int) -> int:
        if c not in depth:
            below = {of[w] for v in components[c] for w in edges[v]} - {c}
            depth[c] = 1 + max((height(b) for b in below), default=-1)
        return depth[c]

    circular = {(v, w) for v, ws in edges.items() for w in ws if of[v] == of[w]}
    return {v: height(of[v]) for v in edges}, circular


def draw(edges: dict[str, set[str]], lines: dict[str, int], title: str, out: Path) -> None:
    level, circular = layers(edges)
    rows: dict[int, list[str]] = defaultdict(list)
    for name in sorted(edges):
        rows[level[name]].append(name)
    place = {
        name: ((i + 1) / (len(row) + 1), (depth + 0.5) / (max(rows) + 1))
        for depth, row in rows.items()
        for i, name in enumerate(row)
    }
    fig = Figure(figsize=(11, 1.6 + 1.3 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_axis_off()
    for source, targets in edges.items():
        for target in targets:
            red = (source, target) in circular
            ax.annotate(
                "",
                xy=place[target],
                xytext=place[source],
                arrowprops={
                    "arrowstyle": "-|>",
                    "color": "tab:red" if red else "0.55",
                    "lw": 1.6 if red else 0.9,
                    "shrinkA": 18,
                    "shrinkB": 18,
                    "connectionstyle": "arc3,rad=0.08",
                },
            )
    in_circle = {name for edge in circular for name in edge}
    for name, (x, y) in place.items():
        frame = {"boxstyle": "round,pad=0.4", "fc": "white", "ec": "tab:red" if name in in_circle else "0.3"}
        ax.text(x, y, f"{name}\n{lines[name]:,} lines", ha="center", va="center", fontsize=9, bbox=frame)
    imports = sum(map(len, edges.values()))
    ax.set_title(f"{title}: {len(edges)} packages, {imports} imports between them, {len(circular)} in circles (red)")
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("import_graph.png"))
    parser.add_argument("--title", default="medllm's packages, each above what it imports")
    args = parser.parse_args()
    edges, lines = package_graph()
    draw(edges, lines, args.title, args.out)
    print(f"{args.out}: {len(edges)} packages; lines: {dict(sorted(lines.items()))}")


if __name__ == "__main__":
    main()
