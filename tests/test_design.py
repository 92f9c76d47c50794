"""docs/design.md's module table is the checked truth of the package's structure: it lists
every module, each module imports (at module level or inside a function) only modules listed
before it, so the import graph has no cycle; and the run spec is resolved in one place."""

import ast
import graphlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lapdog_jax"
DESIGN = ROOT / "docs" / "design.md"


def package_modules() -> dict[str, pathlib.Path]:
    """{name relative to lapdog_jax ('steps', 'data', 'data.lengths'): file} of every module
    of the package but its root."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def table_order(text: str) -> list[str]:
    """The modules of the '## Modules' table, in the order listed: row by row, each row's
    first column left to right (names in backticks)."""
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) > 2 and not set(cells[1].strip()) <= set("-"):
            names += re.findall(r"`([\w.]+)`", cells[1])
    return names


def imports(name: str, path: pathlib.Path, modules) -> dict[str, int]:
    """{imported package module: first line} of every lapdog_jax import in `path`, at module
    level or inside a function (the package root itself, `import lapdog_jax`, left out)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package
                base = ["lapdog_jax", *package.split(".")] if package else ["lapdog_jax"]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] != "lapdog_jax":
                continue
            while len(parts) > 1 and ".".join(parts[1:]) not in modules:
                parts.pop()  # a name from a module, not a module: the module itself
            if len(parts) > 1 and ".".join(parts[1:]) != name:
                found.setdefault(".".join(parts[1:]), node.lineno)
    return found


MODULES = package_modules()
GRAPH = {name: imports(name, path, MODULES) for name, path in MODULES.items()}


def test_the_table_lists_every_module_once():
    order = table_order(DESIGN.read_text(encoding="utf-8"))
    assert len(order) == len(set(order)), sorted({n for n in order if order.count(n) > 1})
    assert not set(MODULES) - set(order), (
        f"docs/design.md's module table lacks {sorted(set(MODULES) - set(order))}")
    assert not set(order) - set(MODULES), (
        f"docs/design.md's module table names {sorted(set(order) - set(MODULES))}, which are "
        "not modules of lapdog_jax")


def cycle(graph: dict) -> list[str] | None:
    """One import cycle of `graph` {module: imported modules}, as [a, b, ..., a], or None."""
    try:
        list(graphlib.TopologicalSorter({n: set(d) for n, d in graph.items()}).static_order())
    except graphlib.CycleError as e:
        return list(reversed(e.args[1]))
    return None


def test_the_import_graph_has_no_cycle():
    found = cycle(GRAPH)
    assert found is None, ("import cycle (module and function-level imports): "
                           + " -> ".join(found))


def test_each_module_imports_only_modules_listed_before_it():
    order = table_order(DESIGN.read_text(encoding="utf-8"))
    rank = {n: i for i, n in enumerate(order)}
    wrong = [f"lapdog_jax/{MODULES[name].relative_to(PACKAGE)}:{line} imports {dep}, listed "
             f"after {name}" for name in order if name in GRAPH
             for dep, line in GRAPH[name].items() if rank.get(dep, len(order)) > rank[name]]
    assert not wrong, "docs/design.md's module table is out of order:\n" + "\n".join(wrong)


def test_the_checks_see_function_level_imports_and_their_cycles(tmp_path):
    """A lazy import inside a function is an edge like any other, and a cycle through one is
    found (as `sharding -> validation -> rewards -> distributed -> sharding` was)."""
    (tmp_path / "a.py").write_text("import lapdog_jax.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from lapdog_jax import c\n")
    (tmp_path / "c.py").write_text("from lapdog_jax.a import thing\n")
    names = {"a", "b", "c"}
    graph = {n: imports(n, tmp_path / f"{n}.py", names) for n in sorted(names)}
    assert graph == {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 1}}
    assert cycle(graph) in (["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"])
    assert table_order("## Modules\n\n| module | job |\n|---|---|\n| `a`, `b.c` | x `d` |\n"
                       "\n## Next\n| `e` | |\n") == ["a", "b.c"]


def test_the_run_spec_is_resolved_in_one_place():
    """`run_spec.resolve` runs where a run or a tool starts (`validation.validate`, which
    both call); everything below takes the spec handed down."""
    calls = [f"{name}:{node.lineno}" for name, path in MODULES.items()
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "resolve" and isinstance(node.func.value, ast.Name)
             and node.func.value.id == "run_spec"]
    assert [c.split(":")[0] for c in calls] == ["validation"], calls
