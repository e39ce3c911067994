"""The package imports only downward: each folder (and root module) of `threadembed_assets` sits on one layer of
`LAYERS`, and a module may import its own layer and the layers below it, never one above. Imports inside functions
count as much as those at the top of a module (a late import is still a dependency), relative ones are resolved.

`LAYERS` is the one place the order is written down; docs/architecture.md describes it. A new folder or root module
fails `test_every_folder_and_root_module_has_a_layer` until it is placed."""

import ast
import importlib
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "threadembed_assets"
ROOT = PACKAGE.name


class Layer(NamedTuple):
    """Folders and root modules (without `.py`) of the package on one layer, and what that layer is."""

    names: tuple[str, ...]
    what: str


LAYERS = (
    Layer(
        ("__init__", "settings", "versions", "links", "reports", "resources"),
        "the library every stage uses: paths from the environment, code versions, atomic links, results files, the "
        "`compute` and `models` resources (the warehouse and search need them as much as training)",
    ),
    Layer(
        ("chat",),
        "models of chat, with no assets and no warehouse: chat features, the retrieval task record, retrievers, "
        "retrieval metrics, the chat ranker, and the disentanglement library (corpus format, online linker, link "
        "features and metrics, baselines); below sources, whose IRC loader reads the corpus's annotations, and the "
        "warehouse, which links messages with the published linker",
    ),
    Layer(("sources",), "the source registry, a loader per platform, chat JSONL, the raw asset and raw cache"),
    Layer(("warehouse",), "the DuckDB schema, load SQL, conversations, rendering, provenance, assets"),
    Layer(("summaries",), "the LLM resource, prompt, extractive summarizer, asset"),
    Layer(("pairs",), "training pairs per strategy, their quality metrics and checks, assets"),
    Layer(
        ("evaluation",),
        "the retrieval tasks built from the warehouse; below training, whose dev evaluator builds the thread task",
    ),
    Layer(("training",), "presets, data, the stage trainer, mining, the training assets, the model a ranker reads"),
    Layer(
        ("disentangle",),
        "the disentangler asset and its CLI (and the old paths of the library now in chat/); above training, as the "
        "disentangler reads thread_model",
    ),
    Layer(
        ("benchmark",),
        "the chat_ranker and benchmark assets, scoring, the CLI; disentangle/ imports nothing of benchmark/",
    ),
    Layer(
        ("search",),
        "ChatIndex, vectors and stored builds, the ONNX export, the search assets, the CLI and HTTP app; on top, as "
        "its assets follow the chat_ranker asset",
    ),
    Layer(("definitions", "run"), "the code location and `make run`: they may import anything"),
)


def layer_of(module: str) -> int:
    """The layer of a dotted module name of the package (`threadembed_assets` itself is its `__init__`)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return next(level for level, layer in enumerate(LAYERS) if top in layer.names)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) of every import of the package in `path`, at any depth, once each: `from a import b`
    names the module `a.b` where that is one, else `a`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                found.append((node.lineno, f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin))
    return sorted({(line, name) for line, name in found if name == ROOT or name.startswith(ROOT + ".")})


def test_no_module_imports_a_higher_layer():
    modules = package_modules()
    upward = []
    for module, path in modules.items():
        level = layer_of(module)
        for line, imported in imports_of(module, path, set(modules)):
            if layer_of(imported) > level:
                where = f"{path.relative_to(PACKAGE.parent)}:{line}"
                upward.append(f"{module} (layer {level}) imports {imported} (layer {layer_of(imported)})  [{where}]")
    if upward:
        pytest.fail(f"{len(upward)} imports go up the layers of test_layers.LAYERS:\n" + "\n".join(upward), False)


def test_every_folder_and_root_module_has_a_layer():
    present = {
        entry.stem if entry.is_file() else entry.name
        for entry in PACKAGE.iterdir()
        if (entry.is_file() and entry.suffix == ".py") or (entry.is_dir() and any(entry.rglob("*.py")))
    }
    placed = [name for layer in LAYERS for name in layer.names]
    twice = sorted({name for name in placed if placed.count(name) > 1})
    unplaced, missing = sorted(present - set(placed)), sorted(set(placed) - present)
    assert not twice, f"on two layers of test_layers.LAYERS: {twice}"
    assert not unplaced, f"place these in test_layers.LAYERS: {unplaced}"
    assert not missing, f"test_layers.LAYERS names what the package lacks: {missing}"


def alias_targets() -> dict[str, str]:
    """Old module paths kept as aliases (a module that replaces itself in `sys.modules`) -> the module they are."""
    aliases = {}
    for module, path in package_modules().items():
        if "sys.modules[__name__]" in (text := path.read_text()):
            target = next(node for node in ast.parse(text).body if isinstance(node, ast.ImportFrom))
            aliases[module] = f"{target.module}.{target.names[0].name}"
    return aliases


def test_old_paths_are_the_moved_modules_and_the_package_never_imports_through_them():
    aliases = alias_targets()
    assert len(aliases) >= 10  # the ten modules the layering moved down
    for old, new in aliases.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    modules = package_modules()
    through = [
        f"{module} imports {imported}"
        for module, path in modules.items()
        for _, imported in imports_of(module, path, set(modules))
        if imported in aliases and module not in aliases
    ]
    assert not through, f"import the new paths instead: {through}"
