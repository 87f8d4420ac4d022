"""The run directory: which files each step of a run writes, and the manifest ``run.json`` that records the steps done.

A run is a sequence of steps (``train`` -> ``fit`` -> ``prune`` -> ``finetune`` ->
``report``), each reading what the ones before it wrote. Every step stages its files and
moves them in only when all are written, then records itself in ``run.json``; redoing a
step (a refit with another prior, say) forgets the steps after it and removes their files,
so the directory never mixes a new posterior with a pruned model from the old one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyro_dirichlet.atomic import atomic_write_json

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "STEPS",
    "RunDirectory",
    "RunDirectoryError",
    "check_writable",
    "move_run",
]

FORMAT = "pyro-dirichlet.run"
#: Bumped when a step's files change meaning; a directory of another version is refused.
FORMAT_VERSION = 1
MANIFEST = "run.json"
#: The steps in the order they run; each needs every step before it.
STEPS = ("train", "fit", "prune", "finetune", "report")


class RunDirectoryError(ValueError):
    """A run directory cannot serve the step asked of it: a step missing, another format version."""


def check_writable(path: Path) -> None:
    """Fail before any work when ``path`` (a directory, existing or not) cannot be written."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirectoryError(f"run directory {str(path)!r} cannot be created: {str(probe)!r} is a file.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"run directory {str(path)!r} cannot be written: no write permission on {str(probe)!r}.")


@dataclass(frozen=True)
class RunDirectory:
    """One run's folder and its manifest.

    Args:
        path: the folder (``--out`` / ``--run``).

    Example:
        >>> run = RunDirectory(Path("runs/demo"))  # doctest: +SKIP
        >>> run.record("fit")["config"]["prior"]  # doctest: +SKIP
        0.5
    """

    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any]:
        """The manifest, or an empty one when the folder holds no run yet.

        Raises:
            RunDirectoryError: the manifest is unreadable or of another format version.
        """
        if not self.manifest_path.exists():
            return {"format": FORMAT, "format_version": FORMAT_VERSION, "steps": {}}
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise RunDirectoryError(f"{self.manifest_path} cannot be read as a run manifest: {error}.") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise RunDirectoryError(f"{self.manifest_path} is not a pyro-dirichlet run manifest.")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise RunDirectoryError(
                f"run directory {str(self.path)!r} has format version {version}, but this pyro-dirichlet "
                f"reads version {FORMAT_VERSION}: start a new run directory with `pyro-dirichlet train`."
            )
        return manifest

    def record(self, step: str) -> dict[str, Any]:
        """What ``step`` recorded (``config``, ``result``, ``files``, ``seconds``), checking it is done and its files exist.

        Raises:
            RunDirectoryError: naming the step to run first.
        """
        _check_step(step)
        if not self.manifest_path.exists():
            raise RunDirectoryError(
                f"{str(self.path)!r} is not a run directory yet (no {MANIFEST}): "
                f"run `pyro-dirichlet train --out {self.path}` first."
            )
        record = self.manifest()["steps"].get(step)
        missing = [] if record is None else [name for name in record["files"] if not (self.path / name).exists()]
        if record is None or missing:
            option = "--out" if step == "train" else "--run"
            raise RunDirectoryError(
                f"run directory {str(self.path)!r} has no {step} step"
                + (f" ({', '.join(missing)} missing)" if missing else "")
                + f": run `pyro-dirichlet {step} {option} {self.path}` first."
            )
        return record

    def done(self) -> list[str]:
        """The steps recorded as done, in order."""
        steps = self.manifest()["steps"]
        return [step for step in STEPS if step in steps]

    @contextlib.contextmanager
    def stage(self) -> Iterator[Path]:
        """A staging folder inside the run directory for one step's files (see :meth:`commit`).

        It is removed on leaving the block, whatever happened; what :meth:`commit` did not
        move in is lost, so a failed step leaves the run directory as it was.
        """
        check_writable(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.path))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def commit(self, step: str, staging: Path, *, config: Mapping[str, Any], result: Mapping[str, Any],
               seconds: float, identity: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Move a step's staged files in and record the step in the manifest, which is written last.

        The steps after ``step`` are forgotten and their files removed: they were computed
        from what this step just replaced.

        Args:
            step: one of :data:`STEPS`.
            staging: the folder from :meth:`stage` holding the step's files.
            config: the step's settings, JSON-ready.
            result: what the step measured, JSON-ready.
            seconds: how long the step took.
            identity: top-level manifest fields the step sets (``train`` sets ``model``,
                ``dataset`` and ``data``).

        Returns:
            the manifest as written.
        """
        _check_step(step)
        manifest = self.manifest()
        files = sorted(p.name for p in staging.iterdir())
        later = STEPS[STEPS.index(step) + 1:]
        stale = {name for s in later for name in manifest["steps"].get(s, {}).get("files", [])} - set(files)
        # JSON first: an unserialisable record fails before any file moves.
        record = json.loads(json.dumps({
            "config": dict(config), "result": dict(result), "files": files, "seconds": seconds,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }))
        for name in files:
            os.replace(staging / name, self.path / name)
        manifest = {**manifest, **(identity or {})}
        manifest["steps"] = {s: r for s, r in manifest["steps"].items() if s not in later}
        manifest["steps"][step] = record
        atomic_write_json(self.manifest_path, manifest)
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        return manifest


def move_run(source: Path, target: Path, *, last: Sequence[str] = (MANIFEST, "report.json")) -> None:
    """Move every file of the run directory ``source`` into ``target``, the files in ``last`` at the end.

    ``pyro-dirichlet run`` builds a whole run in a staging folder and moves it in with this,
    so a run that fails halfway leaves ``target`` as it was.
    """
    names = sorted(p.name for p in source.iterdir() if not p.name.startswith(".staging-"))
    for name in [n for n in names if n not in last] + [n for n in last if n in names]:
        os.replace(source / name, target / name)


def _check_step(step: str) -> None:
    if step not in STEPS:
        raise ValueError(f"step must be one of {', '.join(STEPS)}, got {step!r}.")
