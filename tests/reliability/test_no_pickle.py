"""No pickles anywhere in the project's code: nothing we read can execute code when loaded.

An AST scan of every Python file under planner/, profiler/, runtime/, bench/ and tests/: no import of
pickle-family modules, no torch.load without ``weights_only=True``, no numpy/pandas pickle readers.
The one exception: a ``pickle.Unpickler`` subclass with an allow-list ``find_class`` (reading DCP's .metadata,
which DCP writes as a pickle). DCP checkpoints: test_checkpoint_faults.py loads a booby-trapped one.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("planner", "profiler", "runtime", "bench", "tests")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal", "copyreg"}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


RESTRICTED_OK = {"Unpickler", "UnpicklingError"}


def restricted_unpickler_only(tree: ast.AST) -> bool:
    """The one acceptable use of pickle: a ``pickle.Unpickler`` subclass with an allow-list ``find_class``
    (Python docs, "Restricting Globals"), e.g. to read DCP's .metadata; no load/loads/dump of anything else."""
    uses = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "pickle"}
    defines_find_class = any(isinstance(n, ast.FunctionDef) and n.name == "find_class" for n in ast.walk(tree))
    return bool(uses) and uses <= RESTRICTED_OK and defines_find_class


def offences(path: Path) -> list[str]:
    with warnings.catch_warnings():  # other files' invalid escapes are not this test's business
        warnings.simplefilter("ignore")
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    restricted = restricted_unpickler_only(tree)
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES
                    and not (a.name == "pickle" and restricted)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            out.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            kw = {k.arg: k.value for k in node.keywords}
            if name == "load" and owner == "torch" and not _is_true(kw.get("weights_only")):
                out.append(f"{where}: torch.load without weights_only=True")
            if name == "load" and owner in ("np", "numpy") and "allow_pickle" in kw and not (
                    isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False):
                out.append(f"{where}: numpy.load with allow_pickle")
            if name in ("read_pickle", "to_pickle"):
                out.append(f"{where}: pandas {name}")
    return out


def python_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts]
    assert len(files) > 20, "the scan found too few files: wrong root?"
    return files


def test_no_pickle_anywhere() -> None:
    found = [o for p in python_files() for o in offences(p)]
    assert not found, "pickle use found:\n" + "\n".join(found)


def test_scanner_catches_what_it_claims(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nfrom dill import loads\nimport torch, numpy as np\n"
                   "torch.load('x')\ntorch.load('x', weights_only=False)\nnp.load('x', allow_pickle=True)\n"
                   "import pandas as pd\npd.read_pickle('x')\ntorch.load('x', map_location='cpu', weights_only=True)\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = offences(bad)
    finally:
        ROOT = saved
    assert len(found) == 6, found
    ok = tmp_path / "ok.py"
    ok.write_text("import pickle\nclass R(pickle.Unpickler):\n    def find_class(self, m, n):\n"
                  "        raise pickle.UnpicklingError(n)\n")
    bad2 = tmp_path / "bad2.py"
    bad2.write_text(ok.read_text() + "x = pickle.loads(b'')\n")
    saved, ROOT = ROOT, tmp_path
    try:
        assert offences(ok) == [] and len(offences(bad2)) == 1
    finally:
        ROOT = saved
