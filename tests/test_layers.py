"""The house's layers as its imports draw them: no circle, the leaves imported only from the top, and
inference that never loads training code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

#: Modules that only the command line, the page and the integrations may import (lazily or not).
LEAVES = ("mvpseg.export", "mvpseg.onnx_segmenter", "mvpseg.publish", "mvpseg.integrations")
#: ... and who those are.
TOP = ("mvpseg.cli", "mvpseg.web", "mvpseg.integrations", "mvpseg.__main__")
#: What loading a model for inference and predicting must not bring in.
TRAINING = ("mvpseg.transfer", "mvpseg.runs", "mvpseg.train", "mvpseg.losses", "mvpseg.feature_cache")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((SRC / "mvpseg").rglob("*.py"))}


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def import_graph() -> dict[str, set[str]]:
    """Module -> the mvpseg modules it imports anywhere in its file (function-level imports included; names
    imported from a package resolve to its submodule where one exists, else to the package)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if _is_package(path) else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    child = f"{source}.{alias.name}"
                    targets.add(child if child in modules else source)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_reader_sees_a_circle_and_a_lazy_import(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    real = import_graph()
    assert "mvpseg.build" in real["mvpseg.inference"]  # "from . import build": the submodule
    assert "mvpseg.export" in real["mvpseg.cli.common"]  # imported inside a function (load_segmenter)


def test_no_circle_of_imports() -> None:
    assert _cycle(import_graph()) is None


def test_leaves_are_imported_only_by_the_command_line_the_page_and_integrations() -> None:
    graph = import_graph()
    wrong = {(importer, target) for importer, targets in graph.items() for target in targets
             if target.startswith(LEAVES) and not importer.startswith(TOP + LEAVES)}
    assert not wrong


def test_loading_models_for_inference_imports_no_training_code(tmp_path: Path) -> None:
    from mvpseg.build import build_student, from_pretrained
    from mvpseg.checkpoint import save_student_checkpoint
    from mvpseg.config import StudentConfig
    from mvpseg.world.prompts_asset import WORLD_PROMPTS

    teacher = from_pretrained("mvpseg-tiny", "mvpseg", WORLD_PROMPTS, device="cpu")
    student = build_student(teacher, StudentConfig(backbone="clip", head="mvpseg", head_channels=8))
    path = save_student_checkpoint(tmp_path / "student.safetensors", student, teacher={})
    code = f"""
import sys
import numpy as np
import mvpseg
image = np.zeros((70, 90, 3), np.uint8)
for source in ({{"prompts": {str(WORLD_PROMPTS)!r}}}, {{"student": {str(path)!r}}}, {{}}):
    segmenter = mvpseg.Segmenter.from_pretrained(clip="mvpseg-tiny", pretrained="mvpseg", device="cpu", **source)
    assert segmenter.predict(image, ["sky", "a red car"]).labels.shape == (70, 90)
print(" ".join(sorted(name for name in sys.modules if name.startswith("mvpseg"))))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = result.stdout.split()
    assert "mvpseg.student" in loaded and "mvpseg.inference" in loaded
    assert not [name for name in loaded if name.startswith(TRAINING + LEAVES)]


@pytest.mark.parametrize("module", ["mvpseg.transfer.pseudo", "mvpseg.student", "mvpseg.build"])
def test_importing_a_model_part_runs_no_training_loop(module: str) -> None:
    code = f"import sys, {module}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not {"mvpseg.transfer.loop", "mvpseg.runs", "mvpseg.train"} & set(result.stdout.split())
