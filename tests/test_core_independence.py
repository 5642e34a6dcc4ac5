"""The layers import only downwards: the core is pure tensor code, families know no lmms-eval, and only the tools
and the adapters import the adapters."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = sorted(path.stem for path in (REPO / "fopru_eval" / "core").glob("*.py") if path.stem != "__init__")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_imports_with_lmms_eval_transformers_and_the_adapters_unavailable() -> None:
    modules = ", ".join(f"fopru_eval.core.{name}" for name in CORE)
    program = (
        "import sys\n"
        "for blocked in ('lmms_eval', 'transformers', 'fopru_model_adapters'):\n"
        "    sys.modules[blocked] = None  # any import of it now fails\n"
        f"import {modules}\n"
        "above = ('lmms_eval.', 'transformers.', 'fopru_eval.families', 'fopru_eval.tools', 'fopru_model_adapters.')\n"
        "loaded = [name for name in sys.modules if name.startswith(above)]\n"
        "assert not loaded, loaded\n"
    )
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_the_core_defines_no_modules() -> None:
    for name in CORE:
        imports = imported_modules(REPO / "fopru_eval" / "core" / f"{name}.py")
        assert not {"torch.nn", "transformers", "lmms_eval"} & imports, (name, imports)
        assert "nn.Module" not in (REPO / "fopru_eval" / "core" / f"{name}.py").read_text(), name


def test_each_layer_imports_only_the_layers_below_it() -> None:
    # Lower layers first; a module may import its own layer and those before it, never one after it.
    layers = [
        ("fopru_eval/core", "fopru_eval.core"),
        ("fopru_eval/families", "fopru_eval.families"),
        ("model_adapters", "fopru_model_adapters"),
        ("fopru_eval/tools", "fopru_eval.tools"),
    ]
    for depth, (folder, _) in enumerate(layers):
        above = [package for _, package in layers[depth + 1 :]]
        for path in (REPO / folder).rglob("*.py"):
            for module in imported_modules(path):
                assert not module.startswith(tuple(above)), f"{path.relative_to(REPO)} imports {module}"
        if depth < 2:  # lmms-eval is for the adapters and the tools only
            for path in (REPO / folder).rglob("*.py"):
                assert not any(m.startswith("lmms_eval") for m in imported_modules(path)), path
