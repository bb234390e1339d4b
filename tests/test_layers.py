"""The package's layers, read from the source with `ast` (nothing is imported): which module may import which.

Layers, lowest first (README "Code map"):
  errors
  engine/*, tasks/*                      the model and the benchmarks; they know nothing of each other or above
  core: config, runs, schema, rows, selection, metrics, stats, guards, progress, generation, scaleout
                                         only config knows the stages' configs (RunConfig and its subclasses)
  train/*                                losses, LoRA, the training loop
  report/*                               reads run directories; never the engine, training or torch
  stages/*                               peers: none imports another; what they share is stages/kit.py
  cli                                    parses and dispatches
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "sharpen"
CORE = {"config", "runs", "schema", "rows", "selection", "metrics", "stats", "progress", "generation", "guards",
        "scaleout"}
# What each layer may import (besides itself, where marked).
ALLOWED = {
    "errors": set(),
    "engine": {"errors", "engine"},
    "tasks": {"errors", "tasks"},
    "core": {"errors", "engine", "tasks", "core"},
    "train": {"errors", "engine", "core", "train"},
    "report": {"errors", "core", "report"},
    "stages": {"errors", "engine", "tasks", "core", "train", "report"},
    "cli": {"errors", "core", "tasks", "report", "stages", "package"},
    "package": {"errors", "engine", "tasks"},  # the public API (sharpen.load_model, ...), loaded lazily
}
# Report modules run where torch may be missing: the core modules they may read.
REPORT_CORE = {"runs", "schema", "rows", "selection", "metrics", "stats"}
MAX_CHAIN = 7  # cli -> a stage -> stages.kit -> generation -> the engine's three levels


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(mod: str) -> str:
    parts = mod.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in ("engine", "tasks", "train", "report", "stages"):
        return parts[1]
    if parts[1] in CORE:
        return "core"
    return parts[1]  # errors, cli


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(mod: str, node: ast.ImportFrom, is_pkg: bool) -> list[str]:
    """The package modules an ImportFrom names (a submodule when `from pkg import sub` names a module)."""
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("sharpen"):
        return []
    known = modules()
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    return subs or [target]


def _imports_of(mod: str, path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, str]] = []
    stack: list[tuple[ast.AST, str]] = [(tree, "top")]
    while stack:
        node, where = stack.pop()
        for child in ast.iter_child_nodes(node):
            w = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                w = "function"
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                w = "type-checking" if where == "top" else where
            if isinstance(child, ast.ImportFrom):
                found.extend((t, w) for t in _resolve(mod, child, path.name == "__init__.py"))
            elif isinstance(child, ast.Import):
                found.extend((a.name, w) for a in child.names if a.name.startswith("sharpen"))
            stack.append((child, w))
    return found


@functools.cache
def imports() -> dict[str, list[tuple[str, str]]]:
    """module -> [(imported module, where)], where is "top", "function" or "type-checking"."""
    return {mod: _imports_of(mod, path) for mod, path in modules().items()}


def runtime_graph() -> dict[str, set[str]]:
    return {m: {t for t, w in edges if w != "type-checking" and t != m} for m, edges in imports().items()}


def test_every_layer_says_what_it_holds_and_may_import():
    for pkg in ("engine", "train", "stages", "report"):
        doc = ast.get_docstring(ast.parse((PKG / pkg / "__init__.py").read_text()))
        assert doc and "import" in doc, f"sharpen/{pkg}/__init__.py needs a docstring saying what it may import"


def violations(graph: dict[str, list[tuple[str, str]]]) -> list[str]:
    """Every import against the layers in `graph` (module -> [(imported module, where)])."""
    bad = []
    for m, edges in graph.items():
        lm = layer(m)
        for t, w in edges:
            lt = layer(t)
            if lt != lm and lt not in ALLOWED[lm]:
                bad.append(f"{m} -> {t}: layer {lm} may not import {lt}")
            if lm == lt == "stages" and t not in (m, "sharpen.stages", "sharpen.stages.kit"):
                bad.append(f"{m} -> {t}: a stage imports another stage (move the shared piece to stages/kit.py)")
            if lm == lt == "report" and t not in (m, "sharpen.report.kit"):
                bad.append(f"{m} -> {t}: reports share only report.kit")
            if lm == "report" and lt == "core" and t.split(".")[1] not in REPORT_CORE:
                bad.append(f"{m} -> {t}: reports run without torch, {t} needs it")
            # The one exception: the CLI imports a command's stage where the command runs, because stages import
            # torch and `sharpen --help` / `sharpen report` must work without it.
            if w == "function" and not (m == "sharpen.cli" and lt == "stages"):
                bad.append(f"{m} -> {t}: imported inside a function (package imports stand at the top)")
    return bad


@functools.cache
def stage_configs() -> frozenset[str]:
    """The stages' config classes, read from the config package: RunConfig and every class derived from it."""
    classes = [c for p in sorted((PKG / "config").glob("*.py")) for c in ast.parse(p.read_text()).body
               if isinstance(c, ast.ClassDef)]
    found = {"RunConfig"}
    while new := {c.name for c in classes if c.name not in found and any(ast.unparse(b) in found for b in c.bases)}:
        found |= new
    return frozenset(found)


def config_names(mod: str, path: Path) -> set[str]:
    """The names `mod` imports from sharpen.config, anywhere in it (type-checking imports included); the whole
    module imported counts as every stage config."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            targets = _resolve(mod, node, path.name == "__init__.py")
            if any(t == "sharpen.config" or t.startswith("sharpen.config.") for t in targets):
                names |= set(stage_configs()) if node.module is None else {a.name for a in node.names}
        elif isinstance(node, ast.Import) and any(a.name == "sharpen.config" for a in node.names):
            names |= set(stage_configs())
    return names


def config_violations(names: dict[str, set[str]]) -> list[str]:
    """Core modules (module -> names imported from sharpen.config) that know a stage's config: what reads one
    belongs next to the stages (stages/kit.py)."""
    return [f"{m} -> sharpen.config.{n}: the core knows no stage config (move what reads it to stages/kit.py)"
            for m, ns in sorted(names.items()) if layer(m) == "core" and m.split(".")[:2] != ["sharpen", "config"]
            for n in sorted(ns & stage_configs())]


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                return stack[stack.index(t):] + [t]
            if t not in state and (found := dfs(t)):
                return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (found := dfs(m)):
            return found
    return None


def test_imports_follow_the_layers():
    bad = violations(imports())
    assert not bad, "\n".join(bad)


def test_the_core_knows_no_stage_config():
    assert {"RunConfig", "BonConfig", "SftConfig", "XpoConfig", "GrpoConfig"} <= stage_configs()
    assert "TrainConfig" not in stage_configs()  # the training core's options, not a stage's
    bad = config_violations({m: config_names(m, p) for m, p in modules().items()})
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    found = cycle(runtime_graph())
    assert found is None, "import cycle: " + " -> ".join(found or [])


def test_the_checks_catch_violations():
    fake = {"sharpen.stages.a": [("sharpen.stages.b", "top"), ("sharpen.stages.kit", "top")],
            "sharpen.report.x": [("sharpen.engine.models", "top"), ("sharpen.generation", "top")],
            "sharpen.engine.models": [("sharpen.config", "top")],
            "sharpen.train.loop": [("sharpen.runs", "function")]}
    assert len(violations(fake)) == 5
    fake_names = {"sharpen.generation": {"BonConfig", "TrainConfig"}, "sharpen.guards": {"TrainConfig"},
                  "sharpen.stages.kit": {"SftConfig"}, "sharpen.config": {"RunConfig"}}
    assert config_violations(fake_names) == ["sharpen.generation -> sharpen.config.BonConfig: the core knows no "
                                             "stage config (move what reads it to stages/kit.py)"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def longest_chain(start: str) -> list[str]:
    graph = runtime_graph()

    @functools.cache
    def best(m: str) -> tuple[str, ...]:
        tails = [best(t) for t in graph.get(m, ()) if t in graph]
        return (m, *max(tails, key=len, default=()))

    return list(best(start))


def test_import_chains_from_the_cli_are_short():
    chain = longest_chain("sharpen.cli")
    assert 4 <= len(chain) <= MAX_CHAIN, f"{len(chain)} modules deep: " + " -> ".join(chain)


def test_report_runs_without_torch(tmp_path):
    """`sharpen report DIR` on a best-of-N run directory, in a process where `import torch` fails."""
    from sharpen import runs
    from sharpen.metrics import summarize

    rows = [{"prompt_id": p, "index": i, "text": "x", "token_ids": [1, 2], "logprob": -1.0 - i - j,
             "num_tokens": 2, "finish_reason": "eos", "answer": "True" if i else "False", "correct": bool(i)}
            for j, p in enumerate("ab") for i in range(2)]
    greedy = [dict(r, index=0) for r in rows if r["index"] == 0]
    runs.write_jsonl(tmp_path / "samples.jsonl", rows)
    runs.atomic_write_json(tmp_path / "summary.json", {**summarize(rows, greedy, n=2, seeds=2), "task": "t"})
    runs.atomic_write_json(tmp_path / "config.json", {"command": "bon", "options": {"n": 2}})
    code = ("import sys; sys.modules['torch'] = None\n"
            "from sharpen.cli import main\n"
            f"sys.exit(main(['report', {str(tmp_path)!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "report.md").exists()
