"""The house is one-way: each package imports only the floors below it, no module circle, and no
package reaches into another's private names (benchmarks and tests included: they use public seams).
The map is kept true: every module has its row in docs/architecture.md's Modules table.

    core/       config, space, data, model, store, nomadtext, failures, procs, preflight: imports nothing above
    eval/       metrics of an adapter: imports core
    blackbox/   the executable NOMAD calls, and training: imports core and eval
    bbo/        the optimiser program (NOMAD, tables, report, plan): imports core
    benchmarks/ figures: imports any of the above, through public names only
    tests/      imports any of the above, through public names only
"""
import ast
from pathlib import Path

from conftest import REPO

ALLOWED = {
    "core": {"core"},
    "eval": {"core", "eval"},
    "blackbox": {"core", "eval", "blackbox"},
    "bbo": {"core", "bbo"},
    "benchmarks": {"core", "eval", "blackbox", "bbo", "benchmarks", "fixtures"},
    "fixtures": {"fixtures"},
}
TESTS = REPO / "tests"
DOCUMENTED = ("core", "eval", "blackbox", "bbo", "fixtures")  # the packages docs/architecture.md maps


def _modules() -> dict[str, Path]:
    out = {}
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> list[tuple[str, list[str], int]]:
    """(imported project module, names taken from it, line) for every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] in ALLOWED]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] not in ALLOWED:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # `from bbo import paramfile`: the module itself
                    found.append((sub, [], node.lineno))
                else:
                    found.append((base, [alias.name], node.lineno))
    return found


def _private_attributes(path: Path, modules: dict) -> list[tuple[str, str, int]]:
    """`mod._name` where mod was imported as a project module of another package (reads and monkeypatches)."""
    tree = ast.parse(path.read_text(), str(path))
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ALLOWED:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:
                    bound[alias.asname] = alias.name
    return [(bound[n.value.id], n.attr, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in bound
            and n.attr.startswith("_") and not n.attr.startswith("__")]


def test_packages_import_only_the_floors_below_them():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        top = name.split(".")[0]
        for target, _, line in _imports(name, path, modules):
            if target.split(".")[0] not in ALLOWED[top]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not wrong, "imports that run upward:\n" + "\n".join(wrong)


def test_no_import_circle_between_modules():
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in _imports(name, path, modules):
            target = target if target in modules else target.rpartition(".")[0]
            if target in modules and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_no_package_uses_another_packages_private_names():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        top = name.split(".")[0]
        for target, names, line in _imports(name, path, modules):
            if target.split(".")[0] != top:
                wrong += [f"{path.relative_to(REPO)}:{line} imports {target}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
        for target, attr, line in _private_attributes(path, modules):
            if target.split(".")[0] != top:
                wrong.append(f"{path.relative_to(REPO)}:{line} uses {target}.{attr}")
    for path in sorted(TESTS.rglob("*.py")):  # the tests use what a user or a benchmark could use
        for target, names, line in _imports(f"tests.{path.stem}", path, modules):
            wrong += [f"{path.relative_to(REPO)}:{line} imports {target}.{n}" for n in names
                      if n.startswith("_") and not n.startswith("__")]
        for target, attr, line in _private_attributes(path, modules):
            wrong.append(f"{path.relative_to(REPO)}:{line} uses {target}.{attr}")
    assert not wrong, "private names used across packages:\n" + "\n".join(wrong)


def test_every_module_has_its_row_in_the_architecture_map():
    """docs/architecture.md's Modules table names every module of the packages it maps (a package's
    __init__ by its folder, e.g. `fixtures/`), and no module that is gone."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text()
    table = text[text.index("## Modules"):]
    named = set(re.findall(r"`((?:core|eval|blackbox|bbo|fixtures)/[\w/]*(?:\.py)?)`", table))
    have = set()
    for package in DOCUMENTED:
        for path in (REPO / package).rglob("*.py"):
            body = ast.parse(path.read_text()).body
            if path.name == "__init__.py" and all(isinstance(n, ast.Expr) for n in body):
                continue  # a package marker (at most a docstring): nothing to map
            rel = path.relative_to(REPO).as_posix()
            have.add(rel[: -len("__init__.py")] if path.name == "__init__.py" else rel)
    missing = sorted(m for m in have if m not in named and not (m.endswith("/") and m[:-1] in named))
    gone = sorted(m for m in named if m.endswith(".py") and m not in have)
    assert not missing, "modules without a row in docs/architecture.md's Modules table: " + ", ".join(missing)
    assert not gone, "rows of modules that do not exist: " + ", ".join(gone)


def test_the_checker_sees_what_it_forbids(tmp_path):
    """The walk itself works: an upward import, a circle and a private name in a scratch tree are found."""
    modules = _modules()
    assert "core.config" in modules and "blackbox.train" in modules and "bbo.__main__" in modules
    found = _imports("bbo.__main__", REPO / "bbo" / "__main__.py", modules)
    assert any(t == "core.config" for t, _, _ in found)
    fake = tmp_path / "x.py"
    fake.write_text("from blackbox import train\ntrain._hidden = 1\nfrom core.config import _one_of\n")
    assert _private_attributes(fake, modules) == [("blackbox.train", "_hidden", 2)]
    assert ("core.config", ["_one_of"], 3) in _imports("bbo.x", fake, modules)
