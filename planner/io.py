"""Atomic file writes and strict JSON/YAML reading shared by every tool that writes to disk.

Why: a kill during a write must leave the previous version intact (temp file in the same
directory + fsync + os.replace, which is atomic on POSIX), and a malformed input must become
one line naming the file, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from planner.errors import SpecError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


@contextmanager
def staged_directory(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final_dir`` in one rename.

    Why: a run that fails half-way (infeasible request, crash, Ctrl-C) must leave nothing partial
    in ``reports/`` and must not damage an earlier run's output of the same name.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_swap(final_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".partial", dir=final_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, old)
    try:
        os.replace(tmp, final_dir)
    except BaseException:
        # Two renames cannot be one atomic step: put the previous version back, drop the new one.
        if old is not None:
            os.replace(old, final_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _recover_interrupted_swap(final_dir: Path) -> None:
    """A process killed between staged_directory's two renames leaves the previous version as
    ``.<name>.old-<pid>`` and no ``<name>``: restore it, so the previous version survives the kill."""
    if final_dir.exists():
        return
    for old in sorted(final_dir.parent.glob(f".{final_dir.name}.old-*")):
        try:
            os.replace(old, final_dir)
            return
        except OSError:
            continue


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file; any problem becomes a one-line SpecError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise SpecError(f"{what} is a directory, not a file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {what} {path}: {exc}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise SpecError(f"{what} {path} is nested too deeply to be a valid input") from None
    except ValueError as exc:  # NaN/Infinity literals, integers longer than Python's digit limit
        raise SpecError(f"{what} {path} is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    """Strict JSON: NaN / Infinity are not JSON, and a NaN size or time would poison every result."""
    raise ValueError(f"{name} is not a valid JSON number")


def read_json_or_yaml(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON, or YAML when the suffix says so (YAML via PyYAML's safe loader only)."""
    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        return read_json(path, what)
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a core dependency
        raise SpecError("reading YAML needs PyYAML (pip install pyyaml)") from None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {what} {path}: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise SpecError(f"{what} {path} is not valid YAML: {first}") from None
    except RecursionError:
        raise SpecError(f"{what} {path} is nested too deeply to be a valid input") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise SpecError(f"{what} {path} is not valid YAML: {exc}") from None
