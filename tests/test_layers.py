"""The layers depend one way, and only the runtime touches Faust's and aiokafka's insides.

    topology, schemas          settings, topics, routing, Avro       (bottom)
    streams (but runtime)      the pure model: events, rules, scoring, batch
    streams.runtime            every contact with Faust, aiokafka and the broker
    standing                   the commands                          (top)

Read from the source (AST), so a new import that breaks the order fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What each layer may import from this project (besides itself).
ALLOWED = {
    "topology": {"topology"},
    "schemas": {"schemas"},
    "streams": {"topology", "schemas", "streams"},
    "streams.runtime": {"topology", "schemas", "streams", "streams.runtime"},
    "standing": {"topology", "schemas", "streams", "streams.runtime", "standing"},
    "examples": {"topology", "schemas", "streams", "streams.runtime"},
}
#: Third-party packages only the runtime may import (and the bench's baselines: other programs, public APIs).
RUNTIME_ONLY = {"faust", "aiokafka", "mode", "prometheus_client", "aiohttp", "uvloop", "rocksdict"}
EXCEPTIONS = {
    # the producer's partitioner, murmur2: a pure function, the same the producers use
    ("topology/routing.py", "aiokafka"),
    # baselines in other processes and the peers' own clients
    ("standing/bench.py", "aiokafka"),
    ("standing/bench.py", "rocksdict"),
    # reads the worker's metrics endpoint (the text format)
    ("standing/processes.py", "prometheus_client"),
    # the examples are outside clients written from the README
    ("examples/consume_scores.py", "aiokafka"),
}


def _layer(path: Path) -> str:
    relative = path.relative_to(ROOT).as_posix()
    if relative.startswith("streams/runtime/"):
        return "streams.runtime"
    return relative.split("/")[0]


def _modules(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def _sources() -> list[Path]:
    return sorted(p for layer in ("topology", "schemas", "streams", "standing", "examples") for p in (ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_go_down_the_layers_only(path):
    layer = _layer(path)
    relative = path.relative_to(ROOT).as_posix()
    for module, line in _modules(path):
        top = module.split(".")[0]
        if top in ALLOWED:
            target = "streams.runtime" if module.startswith("streams.runtime") else top
            assert target in ALLOWED[layer], f"{relative}:{line}: {layer} imports {module} (a layer above it)"
        elif top in RUNTIME_ONLY and layer != "streams.runtime":
            if relative.startswith("standing/peers/"):
                continue  # the same-model peers are other systems' programs (bench baselines), on public APIs
            assert (relative, top) in EXCEPTIONS, f"{relative}:{line}: {module} belongs in streams/runtime/"


@pytest.mark.parametrize("path", [p for p in _sources() if _layer(p) != "streams.runtime"], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_private_name_of_faust_or_aiokafka_outside_the_runtime(path):
    """A module outside the runtime that uses Faust or aiokafka at all uses their public names only."""
    if not any(module.split(".")[0] in ("faust", "aiokafka") for module, _ in _modules(path)):
        return
    tree = ast.parse(path.read_text())
    private = [
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("faust", "aiokafka"):
            private += [f"line {node.lineno}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not private, f"{path.relative_to(ROOT)} reaches into Faust or aiokafka: {private}"
