"""The import graph runs one way: data, models, functional → contrast → evaluation → (config)
→ engine → cli, with utils below all of them (README, "Where a change belongs")."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "contextrast"
RANK = {
    "utils": 0,
    "data": 1,
    "models": 1,
    "functional": 1,
    "contrast": 2,
    "evaluation": 3,
    "config": 3.5,  # typed sections derived from the losses; read by engine and CLI only
    "engine": 4,
    "cli": 5,
    "demo": 5,
    "entry": 6,  # the console script: imports cli inside its Ctrl-C guard
}


def stage(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def imported_stages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("contextrast."):
                found.add(node.module.split(".")[1])
            elif node.module == "contextrast":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.split(".")[1] for a in node.names if a.name.startswith("contextrast.")
            )
    return found


def test_every_import_runs_down_the_stages():
    against = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue  # the public API gathers from every stage
        own = stage(path)
        assert own in RANK, f"{path}: a new stage; give it a place in RANK and the README"
        for other in imported_stages(path) - {own, "__version__"}:
            if RANK.get(other, -1) >= RANK[own]:
                against.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert against == []


def test_the_check_sees_an_import_against_the_order(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("from contextrast.engine import Trainer\nimport contextrast.cli\n")
    assert imported_stages(module) == {"engine", "cli"}
