"""The package's shape (issues 18 and 27): no import circle, every in-function import of the
package's own modules says why, no file or function so long that it holds more than one job, one
reader of a run's recipe.yaml, and the GPU asked about in gpu.py alone.

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
MAX_FUNCTION_LINES = 100
LONG_NOTE = "Long on purpose"  # a longer function's docstring says why
RECIPE_READERS = {"recone_lite.run_folder", "recone_lite.runs"}  # reads it; writes and compares it
GPU_MODULE = "recone_lite.gpu"


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


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_over_the_limit_unless_its_docstring_says_why() -> None:
    long = []
    for name, path in modules().items():
        for node in functions(ast.parse(path.read_text(encoding="utf-8"))):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES and LONG_NOTE not in (ast.get_docstring(node) or ""):
                long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines without '{LONG_NOTE}' and a "
                      "reason in their docstring: " + ", ".join(long))


def loads_yaml(tree: ast.AST) -> bool:
    """Whether the code calls `yaml.load` or `yaml.safe_load`."""
    return any(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
               and n.value.id == "yaml" and n.attr in ("load", "safe_load")
               for n in ast.walk(tree))


def code_strings(tree: ast.AST) -> set[str]:
    """The string constants of the code, docstrings left out."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs}


def test_one_reader_of_a_runs_recipe_yaml() -> None:
    """run_folder.RunFolder reads a run's recipe.yaml (runs.py writes it and compares it on
    --resume); no other module parses it by hand or spells its name instead of RECIPE_YAML."""
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if name == "recone_lite.runs":
            continue
        if "recipe.yaml" in code_strings(tree):
            found.append(f"{name}: spells 'recipe.yaml' (runs.RECIPE_YAML names it)")
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        if "RECIPE_YAML" in names and loads_yaml(tree) and name not in RECIPE_READERS:
            found.append(f"{name}: parses YAML beside RECIPE_YAML (RunFolder reads it)")
    assert not found, "\n".join(found)


def test_torch_cuda_is_asked_in_gpu_py_alone() -> None:
    """CUDA facts (is it there, its memory, its errors) have one home: gpu.py."""
    found = []
    for name, path in modules().items():
        if name == GPU_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "cuda" and isinstance(
                    node.value, ast.Name) and node.value.id == "torch":
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, "torch.cuda outside gpu.py (use gpu.cuda_available and its kin): " + \
        ", ".join(found)


def test_the_new_rules_see_what_they_forbid() -> None:
    """The checks above find what they look for (a guard against rules that check nothing)."""
    tree = ast.parse('"""doc: recipe.yaml"""\nimport yaml\nx = yaml.safe_load("recipe.yaml")\n'
                     "import torch\ny = torch.cuda.is_available()\n")
    assert loads_yaml(tree) and "recipe.yaml" in code_strings(tree)
    assert "doc: recipe.yaml" not in code_strings(tree)
    assert any(isinstance(n, ast.Attribute) and n.attr == "cuda" for n in ast.walk(tree))

