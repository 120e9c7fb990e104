"""The dependency rule of docs/architecture.md, checked on every import statement of the packages (also the
ones inside functions): data <- model <- train, cluster reads data, and the annotation app's one exception."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "model", "train", "cluster")
NETWORKS = ("resnet", "efficientnet", "layers", "signature", "lowering", "registry", "inputs", "state")

# package -> packages of ours it may import
ALLOWED = {"data": set(), "model": {"data"}, "train": {"model", "data"}, "cluster": {"data"}}
# the deliberate exception (docs/architecture.md): the annotation app searches an index with its network,
# through the search modules' API (not the networks, not training)
EXCEPTIONS = {"cluster/annotate": {"model.search_service", "model.query", "model.index", "model.search"}}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _files(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    bad = []
    for path in _files(package):
        rel = path.relative_to(REPO).as_posix()
        extra = next((v for k, v in EXCEPTIONS.items() if rel.startswith(k + "/")), set())
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package] and name not in extra:
                bad.append(f"{rel}:{line} imports {name}")
    assert not bad, "imports against the rule of docs/architecture.md:\n" + "\n".join(bad)


def test_the_networks_import_nothing_of_ours():
    bad = []
    for name in NETWORKS:
        path = REPO / "model" / f"{name}.py"
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            if top in PACKAGES and not mod.startswith("model."):
                bad.append(f"model/{name}.py:{line} imports {mod}")
            if mod.startswith("model.") and mod.split(".")[1] not in NETWORKS:
                bad.append(f"model/{name}.py:{line} imports {mod}, which is not a network module")
    assert not bad, "\n".join(bad)


def test_the_rule_sees_a_violation(tmp_path):
    """The check itself: an import inside a function is found."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from train.loop import run\n")
    assert _imports(f) == [(2, "train.loop")]
