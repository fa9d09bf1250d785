"""Imports run one way: ground (spec, conv, layers), family files, registry, what needs the
registry. Ground modules import only one another (layers builds on conv).

The graph is read from the source with ``ast``, module-level and function-level imports alike
(a function-level import that reaches back up is a circle in disguise). The checker runs on
jaxcnn itself and, to show that it can fail, on small packages written here with each fault.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "jaxcnn"
GROUND = {"spec", "conv", "layers"}
ENGINE = "weights"  # the conversion engine: it may read the declarations of spec only


def import_graph(package: pathlib.Path) -> dict[str, set[str]]:
    """``{module: package modules it imports}``, modules named without the package prefix
    (``"__init__"`` for ``import <package>``); other imports are kept under their top name."""
    name = package.name
    modules = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] != name:
                        edges.add(f"<{parts[0]}>")
                    else:
                        edges.add(parts[1] if len(parts) > 1 else "__init__")
            elif isinstance(node, ast.ImportFrom):
                parts = (node.module or "").split(".")
                if node.level:  # relative: from . import x, from .x import y
                    parts = [name, *filter(None, parts)]
                if parts[0] != name:
                    edges.add(f"<{parts[0]}>")
                elif len(parts) > 1:
                    edges.add(parts[1])
                else:  # from <package> import a, b: modules, or names of __init__
                    edges |= {a.name if a.name in modules else "__init__" for a in node.names}
        graph[path.stem] = edges - {path.stem}
    return graph


def private_reads(package: pathlib.Path) -> list[str]:
    """``module: alias._name`` for every read of another package module's private name."""
    name, found = package.name, []
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == name:
                aliases |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names if a.name.startswith(name)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{path.stem}: {node.value.id}.{node.attr}")
    return found


def families(package: pathlib.Path) -> set[str]:
    """The family files: modules that declare ``MODELS`` at module level."""
    out = set()
    for path in package.glob("*.py"):
        for node in ast.parse(path.read_text(), str(path)).body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            if any(isinstance(t, ast.Name) and t.id == "MODELS" for t in targets):
                out.add(path.stem)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by a depth-first walk, each as the path that closes it."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def layering_faults(package: pathlib.Path) -> list[str]:
    """Every breach of the one-way rule, as a sentence naming the modules."""
    graph = import_graph(package)
    own = {m: {e for e in edges if not e.startswith("<")} for m, edges in graph.items()}
    fams = families(package)
    faults = [f"import circle: {' -> '.join(c)}" for c in cycles(own)]
    for module, edges in sorted(graph.items()):
        if "<train>" in edges:
            faults.append(f"{module} imports the trainer (train/ sits on top of the library)")
        if module in GROUND and own[module] - GROUND:
            faults.append(f"ground module {module} imports {sorted(own[module] - GROUND)}")
        if module == ENGINE and own[module] - {"spec"}:
            faults.append(f"the engine {module} imports {sorted(own[module] - {'spec'})}")
        if module in fams:
            for other in sorted(own[module] & fams):
                faults.append(f"family {module} imports family {other}")
            for other in sorted(own[module] - fams - GROUND):
                faults.append(f"family {module} imports {other}, which is above the families")
    faults += [f"private name read across modules: {r}" for r in private_reads(package)]
    return faults


def test_jaxcnn_imports_run_one_way():
    assert families(PACKAGE) >= {"lenet", "resnet", "mobilenet", "efficientnet", "vgg", "alexnet"}
    assert import_graph(PACKAGE)["registry"] >= {"resnet", "spec"}  # the walk sees edges
    assert layering_faults(PACKAGE) == []


FAULTS = {
    "a module-level circle": (
        {"registry": "from pkg import summary\n", "summary": "from pkg import registry\n"},
        "import circle: registry -> summary -> registry"),
    "a function-level circle": (
        {"spec": "", "registry": "from pkg import weights\n",
         "weights": "from pkg import spec\ndef f():\n    from pkg import registry\n"},
        "import circle: registry -> weights -> registry"),
    "a family importing a family": (
        {"spec": "", "alexnet": "MODELS = {}\n",
         "vgg": "from pkg.alexnet import fix\nMODELS = {}\n"},
        "family vgg imports family alexnet"),
    "a family importing from above": (
        {"spec": "", "registry": "", "vgg": "def f():\n    import pkg.registry\nMODELS = {}\n"},
        "family vgg imports registry"),
    "a ground module importing": (
        {"spec": "from pkg import weights\n", "weights": ""},
        "ground module spec imports ['weights']"),
    "the engine reaching up": (
        {"spec": "", "registry": "", "weights": "def f():\n    from pkg import registry\n"},
        "the engine weights imports ['registry']"),
    "the trainer imported": (
        {"zoo": "def f():\n    from train import train\n"},
        "zoo imports the trainer"),
    "a private read": (
        {"registry": "_REGISTRY = {}\n",
         "convert": "from pkg import registry\nregistry._REGISTRY\n"},
        "private name read across modules: convert: registry._REGISTRY"),
}


@pytest.mark.parametrize("files,fault", FAULTS.values(), ids=list(FAULTS))
def test_the_checker_finds(tmp_path, files, fault):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, source in files.items():
        (package / f"{module}.py").write_text(source)
    assert any(fault in f for f in layering_faults(package)), layering_faults(package)
