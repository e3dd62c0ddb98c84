"""The package's shape (issue 18): no import circle, every in-function import of the package's own
modules says why, and no file so long that it holds more than one job.

The import graph is read with `ast` (nothing is imported): an edge A -> B for each
`import recone_lite.B` / `from recone_lite[.B] import name` in A, counted separately for imports at
the top of a module (run on import: these must form no cycle) and imports inside a function (run
on call). An in-function import of a `recone_lite` module needs the marker `# why:` on its line or
on the line just above its block of imports, saying why it is not at the top (an optional heavy
module, a cycle it would close, start-up time of the command line).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "recone_lite"
MARKER = "# why:"
MAX_LINES = 600
UNIT_NOTE = "one unit"  # a longer file's top docstring says why it is one unit


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def targets(node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The package modules an import statement loads (a name imported from a package counts as
    its submodule when there is one)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.level or not node.module:
        return set()
    else:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("recone_lite"):
            found.add(name)
    return found


def line_above_block(lines: list[str], lineno: int) -> str:
    """The line above the run of import lines that holds line `lineno` (1-based): one marker
    there covers a block of lazy imports."""
    index = lineno - 2
    while index >= 0 and lines[index].lstrip().startswith(("from ", "import ")):
        index -= 1
    return lines[index] if index >= 0 else ""


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]], list[str]]:
    """`(top-level edges, in-function edges, in-function imports without the marker)`."""
    known = set(modules())
    top: dict[str, set[str]] = {m: set() for m in known}
    inner: dict[str, set[str]] = {m: set() for m in known}
    unmarked: list[str] = []
    for name, path in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        functions = [n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(n) for f in functions for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            found = targets(node, known) - {name}
            if not found:
                continue
            if id(node) in nested:
                inner[name] |= found
                here = lines[node.lineno - 1]
                if MARKER not in here and MARKER not in line_above_block(lines, node.lineno):
                    unmarked.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: "
                                    f"{here.strip()}")
            else:
                top[name] |= found
    return top, inner, unmarked


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path of module names, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_cycle_among_top_level_imports() -> None:
    top, _, _ = import_graph()
    cycle = find_cycle(top)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_cycle_when_in_function_imports_count_too() -> None:
    """An in-function import that closes a circle is a circle all the same (only deferred)."""
    top, inner, _ = import_graph()
    both = {m: top[m] | inner[m] for m in top}
    cycle = find_cycle(both)
    assert cycle is None, "import cycle through an in-function import: " + " -> ".join(cycle)


def test_in_function_imports_of_the_package_say_why() -> None:
    _, _, unmarked = import_graph()
    assert not unmarked, (f"in-function imports of recone_lite modules without a '{MARKER}' "
                          "comment on the line or the line above:\n" + "\n".join(unmarked))


def test_no_file_over_the_limit_unless_its_docstring_says_why() -> None:
    long = []
    for path in modules().values():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if UNIT_NOTE not in doc:
                long.append(f"{path.relative_to(PACKAGE.parent)}: {len(text.splitlines())} lines")
    assert not long, f"files over {MAX_LINES} lines without '{UNIT_NOTE}' in their docstring: " \
        + ", ".join(long)


def test_the_graph_is_read() -> None:
    """The reader sees the edges it should (a guard against a test that checks nothing)."""
    top, _, _ = import_graph()
    assert "recone_lite.errors" in top["recone_lite.config"]
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
