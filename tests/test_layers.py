"""The import-layer contract: a module imports only from its own layer or the layers below.

Layers, low to high (a name covers the module and everything under it)::

    foundations            streamflow (the package's __init__), streamflow.config, .errors, .metrics, .distributed
    events/learners/trigger streamflow.events, streamflow.learners, streamflow.trigger (may import each other)
    stream                 streamflow.stream
    scoring                streamflow.scoring
    ops/analysis           streamflow.ops, streamflow.analysis
    producers/consumers    producers, consumers (the process loops)
    cli                    streamflow.cli

Every ``import`` and ``from ... import`` in every module under ``streamflow/``,
``producers/`` and ``consumers/`` counts: at the top, inside a function, under
``TYPE_CHECKING`` -- an import that would run if the code ran is a dependency.
Relative imports are resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("streamflow", "producers", "consumers")

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", ("streamflow.__init__", "streamflow.config", "streamflow.errors", "streamflow.metrics",
                     "streamflow.distributed")),
    ("events/learners/trigger", ("streamflow.events", "streamflow.learners", "streamflow.trigger")),
    ("stream", ("streamflow.stream",)),
    ("scoring", ("streamflow.scoring",)),
    ("ops/analysis", ("streamflow.ops", "streamflow.analysis")),
    ("producers/consumers", ("producers", "consumers")),
    ("cli", ("streamflow.cli",)),
)
"""The one layer table: (layer name, the module prefixes in it), lowest layer first."""


def layer_of(module: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> int | None:
    """Index of ``module``'s layer in ``layers`` (the longest matching prefix), None if it has none.

    The package ``streamflow`` itself is named ``streamflow.__init__`` in the table, so that the
    prefix ``streamflow`` does not swallow every module under it.
    """
    name = "streamflow.__init__" if module == "streamflow" else module
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module of the project's packages under ``root``, by dotted name."""
    return {module_name(path, root): path for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the project module imported from


def imports(module: str, path: Path, known: set[str]) -> list[Import]:
    """The project modules ``module`` imports from (``from pkg import mod`` counts as ``pkg.mod``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        else:
            continue
        found += [Import(module, node.lineno, target) for target in targets if target.split(".")[0] in PACKAGES]
    return found


def violations(root: Path, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """One line per import from a layer above the importing module's (or by a module with no layer)."""
    found = modules(root)
    known = set(found)
    problems = []
    for module, path in found.items():
        own = layer_of(module, layers)
        where = path.relative_to(root)
        if own is None:
            problems.append(f"{where}: module {module} is in no layer")
            continue
        for imp in imports(module, path, known):
            theirs = layer_of(imp.target, layers)
            if theirs is not None and theirs > own:
                problems.append(f"{where}:{imp.line}: {module} ({layers[own][0]}) imports {imp.target} "
                                f"({layers[theirs][0]}), a layer above")
    return problems


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    problems = violations(ROOT)
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_streamflow_top_level_holds_only_foundations() -> None:
    foundations = set(LAYERS[0][1])
    top = {f"streamflow.{path.stem}" for path in (ROOT / "streamflow").glob("*.py")}
    assert top - foundations == set(), "modules at streamflow/ top level that are no foundation"


def test_every_module_is_in_a_layer() -> None:
    assert [m for m in modules(ROOT) if layer_of(m) is None] == []


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_names_module_line_and_both_layers_of_a_violation(tmp_path: Path) -> None:
    write(tmp_path, {
        "streamflow/__init__.py": "",
        "streamflow/errors.py": "",
        "streamflow/scoring/__init__.py": "",
        "streamflow/scoring/frame_scorer.py": "",
        "streamflow/cli/__init__.py": "",
        "streamflow/cli/main.py": "from streamflow.scoring import frame_scorer\n",  # downwards: fine
        "streamflow/events/__init__.py": "",
        "streamflow/events/schema.py": (
            "from streamflow.errors import StreamflowError\n"  # downwards: fine
            "import numpy\n"  # not the project's: ignored
            "from ..scoring import frame_scorer\n"  # relative, upwards
            "def late():\n"
            "    import streamflow.cli.main\n"  # function-local, upwards
        ),
        "streamflow/events/sub/__init__.py": "from ...stream import wire\n",  # relative from a package init
        "streamflow/stream/__init__.py": "",
        "streamflow/stream/wire.py": "",
        "consumers/__init__.py": "",
        "consumers/loop.py": "from streamflow.cli.main import x\nfrom streamflow import config\n",
    })
    assert sorted(violations(tmp_path)) == [
        "consumers/loop.py:1: consumers.loop (producers/consumers) imports streamflow.cli.main (cli), a layer above",
        "streamflow/events/schema.py:3: streamflow.events.schema (events/learners/trigger) imports "
        "streamflow.scoring.frame_scorer (scoring), a layer above",
        "streamflow/events/schema.py:5: streamflow.events.schema (events/learners/trigger) imports "
        "streamflow.cli.main (cli), a layer above",
        "streamflow/events/sub/__init__.py:1: streamflow.events.sub (events/learners/trigger) imports "
        "streamflow.stream.wire (stream), a layer above",
    ]


def test_a_module_outside_the_table_is_reported(tmp_path: Path) -> None:
    write(tmp_path, {"streamflow/__init__.py": "", "streamflow/gadgets.py": ""})
    assert violations(tmp_path) == ["streamflow/gadgets.py: module streamflow.gadgets is in no layer"]


@pytest.mark.parametrize(("module", "layer"), [
    ("streamflow", "foundations"), ("streamflow.config", "foundations"), ("streamflow.learners.flow",
                                                                           "events/learners/trigger"),
    ("streamflow.stream.wire", "stream"), ("consumers.scorer", "producers/consumers"),
    ("streamflow.cli.main", "cli"),
])
def test_layer_of(module: str, layer: str) -> None:
    index = layer_of(module)
    assert index is not None and LAYERS[index][0] == layer
