"""The run directory: which files each step of a run writes, and the manifest ``run.json`` that records the steps done.

A run is a sequence of steps (``train`` -> ``fit`` -> ``prune`` -> ``finetune`` ->
``report``), each reading what the ones before it wrote. A step holds the directory's lock
(:meth:`RunDirectory.lock`) while it runs, reads its inputs through
:meth:`RunDirectory.input` (which checks them against the SHA-256 their step recorded),
stages its files and commits them with the manifest last (:meth:`RunDirectory.commit`);
redoing a step (a refit with another prior, say) forgets the steps after it and removes
their files, so the directory never mixes a new posterior with a pruned model from the old one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyro_dirichlet.app.lock import LOCK, RunDirectoryLockedError, exclusive
from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.io.regular_files import SpecialFileError, check_regular, read_regular, sha256_of

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "LOCK",
    "STEPS",
    "MAX_MANIFEST_BYTES",
    "STAGING_PREFIX",
    "RunDirectory",
    "RunDirectoryError",
    "RunDirectoryLockedError",
    "check_writable",
    "file_sha256",
    "reading",
    "writing",
    "replace_run",
]

FORMAT = "pyro-dirichlet.run"
#: Bumped when a step's files change meaning; a directory of another version is refused.
FORMAT_VERSION = 1
MANIFEST = "run.json"
#: The steps in the order they run; each needs every step before it.
STEPS = ("train", "fit", "prune", "finetune", "report")
#: A manifest is a few hundred KB (the ELBO of every SVI step); a larger one is refused unread.
MAX_MANIFEST_BYTES = 64 * 2**20
STAGING_PREFIX = ".staging-"
# Inside a staging folder: the old versions of the files a commit replaces, and what it moves.
_PREVIOUS = ".previous"
_JOURNAL = ".commit.json"
# A name a step may write: a plain file name in the run directory, never hidden, never a path.
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")

class RunDirectoryError(ValueError):
    """A run directory cannot serve the step asked of it: a step missing, another format version, a tampered file."""


def check_writable(path: Path) -> None:
    """Fail before any work when ``path`` (a directory, existing or not) cannot be written."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirectoryError(f"run directory {str(path)!r} cannot be created: {str(probe)!r} is a file.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"run directory {str(path)!r} cannot be written: no write permission on {str(probe)!r}.")


@contextlib.contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """Turn any failure to load ``path`` -- a tampered or truncated file -- into one :class:`RunDirectoryError` naming it.

    Loaders of other formats raise what their parser raises (``KeyError``, ``TypeError``,
    ``RecursionError``, a Rust error); the user needs to know which file is bad, not which parser noticed.
    """
    try:
        yield
    except RunDirectoryError:
        raise
    except MemoryError:
        raise RunDirectoryError(f"{path} cannot be loaded: it asks for more memory than there is.") from None
    except RecursionError:
        raise RunDirectoryError(f"{path} cannot be loaded: it is nested too deeply.") from None
    except Exception as error:  # noqa: BLE001 - any parser's failure means the same to the user
        reason = " ".join(str(error).split()).rstrip(".")[:300] or type(error).__name__
        raise RunDirectoryError(f"{path} cannot be loaded ({type(error).__name__}: {reason}).") from None


# How writers that are not Python's own report a failed write: safetensors (Rust) as
# "os error 28", h5py as "[Errno 28]", torch's zip writer only as a short write ("unexpected pos").
_OS_ERROR = re.compile(r"os error (\d+)|\[Errno (\d+)\]")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write inside the block, whatever library made it, into an ``OSError`` with its errno and ``path``.

    So a full disk is one clear error (``main`` prints "no space left on ...") however
    the file was being written.
    """
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        text = str(error)
        found = _OS_ERROR.search(text)
        code = int(found.group(1) or found.group(2)) if found else errno.ENOSPC if (
            "No space left" in text or "unexpected pos" in text) else None
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from error


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, read in 1 MiB blocks; a link, FIFO or device is refused, not read.

    Raises:
        SpecialFileError: ``path`` is not a regular file (or is a symbolic link).
    """
    return sha256_of(path, what="run file", follow_links=False)


@dataclass(frozen=True)
class RunDirectory:
    """One run's folder and its manifest.

    Args:
        path: the folder (``--out`` / ``--run``).
        published: where the folder will be once published, when ``path`` is a staging copy
            (``pyro-dirichlet run`` builds the whole run in one and renames it at the end):
            what the report tells a user to load from. ``None``: ``path`` itself.

    Example:
        >>> run = RunDirectory(Path("runs/demo"))  # doctest: +SKIP
        >>> with run.lock():  # doctest: +SKIP
        ...     run.record("fit")["config"]["prior"]
        0.5
    """

    path: Path
    published: Path | None = field(default=None, compare=False)
    # name -> SHA-256 of each file the current step read through input(); recorded by commit().
    _inputs: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any]:
        """The manifest, checked against its schema, or an empty one when the folder holds no run yet.

        Raises:
            RunDirectoryError: the manifest is unreadable, of another format version, or
                malformed (a key missing or of the wrong type, a file name outside the directory).
        """
        if not os.path.lexists(self.manifest_path):
            return {"format": FORMAT, "format_version": FORMAT_VERSION, "steps": {}}
        where = str(self.manifest_path)
        try:
            try:  # never through a link, never a FIFO or device (which would block or never end)
                text = read_regular(self.manifest_path, what="run manifest", follow_links=False, limit=MAX_MANIFEST_BYTES)
            except SpecialFileError:
                raise RunDirectoryError(f"{where} is not a run manifest: not a regular file of at most "
                                        f"{MAX_MANIFEST_BYTES // 2**20} MiB.") from None
            manifest = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
            raise RunDirectoryError(f"{where} cannot be read as a run manifest: {reason}.") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise RunDirectoryError(f"{where} is not a pyro-dirichlet run manifest.")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise RunDirectoryError(
                f"run directory {str(self.path)!r} has format version {version!r}, but this pyro-dirichlet "
                f"reads version {FORMAT_VERSION}: start a new run directory with `pyro-dirichlet train`."
            )
        self._check_schema(manifest)
        return manifest

    def _check_schema(self, manifest: dict[str, Any]) -> None:
        where = str(self.manifest_path)

        def fail(what: str) -> None:
            raise RunDirectoryError(f"{where} is malformed: {what}.")

        steps = manifest.get("steps")
        if not isinstance(steps, dict):
            fail("'steps' is not an object")
        for key in ("model", "dataset"):
            if key in manifest and not isinstance(manifest[key], str):
                fail(f"{key!r} is not a string")
        if "data" in manifest and not isinstance(manifest["data"], dict):
            fail("'data' is not an object")
        if steps and not {"model", "dataset", "data"} <= set(manifest):
            fail("'model', 'dataset' or 'data' is missing")
        for step, record in steps.items():
            if step not in STEPS:
                fail(f"{step!r} is no step (steps: {', '.join(STEPS)})")
            if not isinstance(record, dict):
                fail(f"step {step!r} is not an object")
            for key, kind in (("config", dict), ("result", dict), ("files", list), ("seconds", (int, float))):
                if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
                    fail(f"step {step!r} has no {key!r} of the right type")
            for name in record["files"]:
                self._check_name(name)
            sizes = record.get("sizes", {})
            if not isinstance(sizes, dict) or not all(
                    isinstance(n, str) and isinstance(b, int) and not isinstance(b, bool) and b >= 0
                    for n, b in sizes.items()):
                fail(f"step {step!r} has 'sizes' that are not an object of byte counts")
            for key in ("sha256", "inputs"):
                digests = record.get(key, {})
                if not isinstance(digests, dict) or not all(
                        isinstance(n, str) and isinstance(d, str) and _SHA256.fullmatch(d) for n, d in digests.items()):
                    fail(f"step {step!r} has a {key!r} that is not an object of SHA-256 digests")
                for name in digests:
                    self._check_name(name)
        done = [step for step in STEPS if step in steps]
        if done != list(STEPS[: len(done)]):
            fail(f"its steps {', '.join(done)} are not a prefix of {', '.join(STEPS)}")

    def _check_name(self, name: Any) -> Path:
        """``path / name`` for a file name read from the manifest, refusing any that leads outside the directory."""
        if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or name == MANIFEST:
            raise RunDirectoryError(f"{self.manifest_path} lists the file {name!r}, which is no file name of a run "
                                    "directory: refusing a manifest that points outside its directory.")
        path = self.path / name
        if path.is_symlink() and path.resolve().parent != self.path.resolve():
            raise RunDirectoryError(f"{path} is a symbolic link out of the run directory: refusing to read or replace it.")
        if os.path.lexists(path):
            try:  # every file a step wrote is a regular file: a link (even inside) or a FIFO is someone else's
                check_regular(path, what="run file", follow_links=False)
            except SpecialFileError as error:
                raise RunDirectoryError(str(error)) from None
        return path

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
        missing = [] if record is None else [name for name in record["files"] if not (self.path / name).is_file()]
        if record is None or missing:
            option = "--out" if step == "train" else "--run"
            raise RunDirectoryError(
                f"run directory {str(self.path)!r} has no {step} step"
                + (f" ({', '.join(missing)} missing)" if missing else "")
                + f": run `pyro-dirichlet {step} {option} {self.path}` first."
            )
        return record

    def input(self, name: str) -> Path:
        """The path of a file an earlier step wrote, after checking it is the file that step recorded.

        A file of another size than its step recorded is refused before it is read, and the
        hash reads no more than that size (a file that grows meanwhile is never read whole).
        Its SHA-256 is remembered, and :meth:`commit` records it as one of the step's inputs
        and refuses to commit when the manifest no longer lists that content.

        Raises:
            RunDirectoryError: no step wrote ``name``, it is missing, or its content changed
                since the step that wrote it (naming that step, to redo it).
        """
        steps = self.manifest()["steps"]
        writer = next((step for step in STEPS if name in steps.get(step, {}).get("files", [])), None)
        if writer is None:
            raise RunDirectoryError(f"run directory {str(self.path)!r} has no {name}: no step recorded in "
                                    f"{MANIFEST} wrote it.")
        self.record(writer)
        path = self._check_name(name)
        option = "--out" if writer == "train" else "--run"
        redo = f"redo that step with `pyro-dirichlet {writer} {option} {self.path}`."
        # The size the step recorded bounds the read: a file that grew is refused, never read whole.
        size = steps[writer].get("sizes", {}).get(name)
        if size is not None and os.lstat(path).st_size != size:
            raise RunDirectoryError(f"{path} has changed since the {writer} step wrote it (it holds "
                                    f"{os.lstat(path).st_size:,} bytes, {MANIFEST} records {size:,}): {redo}")
        try:
            digest = sha256_of(path, what="run file", follow_links=False, limit=size)
        except SpecialFileError:
            raise RunDirectoryError(f"{path} has changed since the {writer} step wrote it (it grew past the "
                                    f"{size:,} bytes {MANIFEST} records): {redo}") from None
        expected = steps[writer].get("sha256", {}).get(name)
        if expected is not None and digest != expected:
            raise RunDirectoryError(f"{path} has changed since the {writer} step wrote it (its SHA-256 differs from "
                                    f"{MANIFEST}'s): {redo}")
        self._inputs[name] = digest
        return path

    def done(self) -> list[str]:
        """The steps recorded as done, in order."""
        steps = self.manifest()["steps"]
        return [step for step in STEPS if step in steps]

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory's exclusive lock (:func:`pyro_dirichlet.app.lock.exclusive`) for one step.

        Creates the directory if needed. On taking the lock, removes what killed commands
        left behind (:meth:`clean_leftovers`) and forgets the inputs of an earlier step.

        Raises:
            RunDirectoryLockedError: another process holds the lock; the message names its PID.
        """
        check_writable(self.path)
        with exclusive(self.path) as taken:
            if taken:
                self._inputs.clear()
                self.clean_leftovers()
            yield

    def clean_leftovers(self) -> list[str]:
        """Undo or remove what commands killed in this directory left: staging folders whose owner is dead.

        A staging folder killed in the middle of a commit (before ``run.json`` moved in) has
        its moved files put back, so the directory is as it was before that command.

        Returns:
            the names of the staging folders removed.
        """
        removed = []
        for staging in self.path.glob(STAGING_PREFIX + "*"):
            owner = re.match(re.escape(STAGING_PREFIX) + r"(?:run-)?(\d+)-", staging.name)
            if owner is not None and _alive(int(owner.group(1))):
                continue
            if staging.is_symlink() or not staging.is_dir():
                # Not a folder a command made: a link's target, wherever it is, is neither read nor moved.
                with contextlib.suppress(OSError):
                    staging.unlink()
                removed.append(staging.name)
                continue
            with contextlib.suppress(OSError, ValueError, RunDirectoryError):
                _roll_back(staging, self.path)
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging.name)
        return removed

    @contextlib.contextmanager
    def stage(self) -> Iterator[Path]:
        """A staging folder inside the run directory for one step's files (see :meth:`commit`).

        It is removed on leaving the block, whatever happened; what :meth:`commit` did not
        move in is lost, so a failed step leaves the run directory as it was. The folder's
        name holds this process's PID, so a later command can tell a killed command's leftovers.
        """
        check_writable(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.path))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def commit(self, step: str, staging: Path, *, config: Mapping[str, Any], result: Mapping[str, Any],
               seconds: float, identity: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Move a step's staged files in and record the step in the manifest, which moves in last.

        The new manifest is written into the staging folder first (a full disk fails there,
        before anything moved); the files it replaces are moved aside, the new ones moved in
        and the manifest renamed into place last. A failure before that last rename puts
        every file back. The steps after ``step`` are forgotten and their files removed:
        they were computed from what this step just replaced.

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

        Raises:
            RunDirectoryError: a file this step read (:meth:`input`) is no longer the one
                the manifest lists: another command replaced it while this step ran.
        """
        _check_step(step)
        manifest = self.manifest()
        files = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
        for name in files:
            self._check_name(name)
        listed = {name: digest for record in manifest["steps"].values()
                  for name, digest in record.get("sha256", {}).items()}
        changed = sorted(name for name, digest in self._inputs.items() if listed.get(name, digest) != digest
                         or not any(name in record["files"] for record in manifest["steps"].values()))
        if changed:
            raise RunDirectoryError(
                f"{', '.join(changed)} in {str(self.path)!r} changed while the {step} step ran (another command "
                f"replaced it): run `pyro-dirichlet {step} --run {self.path}` again.")
        later = STEPS[STEPS.index(step) + 1:]
        stale = {name for s in later for name in manifest["steps"].get(s, {}).get("files", [])} - set(files)
        record = {
            "config": dict(config), "result": dict(result), "files": files, "seconds": seconds,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sha256": {name: file_sha256(staging / name) for name in files},
            "sizes": {name: os.lstat(staging / name).st_size for name in files},
            "inputs": dict(sorted(self._inputs.items())),
        }
        manifest = {**manifest, **(identity or {})}
        manifest["steps"] = {s: r for s, r in manifest["steps"].items() if s not in later}
        manifest["steps"][step] = record
        # JSON round trip: an unserialisable record fails here, before any file moves.
        manifest = json.loads(json.dumps(manifest))
        atomic_write_json(staging / MANIFEST, manifest)
        _swap_in(staging, self.path, files, sorted(stale))
        return manifest


def replace_run(source: Path, target: Path) -> None:
    """Make ``target`` the run directory ``source`` holds, all at once: its files and manifest move in, the old run's other files go.

    ``pyro-dirichlet run`` builds a whole run in a staging folder inside ``target`` and
    moves it in with this, so a run that fails (or a disk that fills) leaves ``target`` as it was.
    """
    new = RunDirectory(source)
    files = sorted({name for record in new.manifest()["steps"].values() for name in record["files"]})
    try:
        old = RunDirectory(target).manifest()["steps"]
    except RunDirectoryError:
        old = {}
    previous = {name for record in old.values() for name in record["files"]} - set(files)
    _swap_in(source, target, files, sorted(previous))


def _swap_in(staging: Path, target: Path, files: Sequence[str], remove: Sequence[str]) -> None:
    """Move ``files`` and then ``MANIFEST`` from ``staging`` into ``target``, the old versions (and ``remove``) aside.

    A journal in ``staging`` says what moves, so :meth:`RunDirectory.clean_leftovers` can put
    the old files back when the process is killed before the manifest moved in.
    """
    previous = staging / _PREVIOUS
    previous.mkdir(exist_ok=True)
    atomic_write_json(staging / _JOURNAL, {"files": list(files), "remove": list(remove)})
    try:
        for name in [*files, *remove]:
            if (target / name).exists():
                os.replace(target / name, previous / name)
        for name in files:
            os.replace(staging / name, target / name)
        os.replace(staging / MANIFEST, target / MANIFEST)  # the commit
    except BaseException:
        _roll_back(staging, target)
        raise
    with contextlib.suppress(OSError):
        descriptor = os.open(target, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _roll_back(staging: Path, target: Path) -> None:
    """Put back what an unfinished :func:`_swap_in` moved, unless its manifest already moved in.

    Only regular files are moved, and only between real folders: a leftover whose journal,
    ``.previous`` folder or files are links (planted to pull a file from elsewhere into the
    run directory) is left unrolled.
    """
    journal = staging / _JOURNAL
    if not _is_regular(journal) or not os.path.lexists(staging / MANIFEST):
        return  # nothing moved yet, or the commit went through
    previous = staging / _PREVIOUS
    if staging.is_symlink() or previous.is_symlink() or not previous.is_dir():
        return
    moves = json.loads(read_regular(journal, what="commit journal", follow_links=False, limit=MAX_MANIFEST_BYTES))
    names = [name for name in [*moves["files"], *moves["remove"]] if _FILE_NAME.fullmatch(name)]
    if any(os.path.lexists(previous / name) and not _is_regular(previous / name) for name in names):
        return  # not what a commit leaves: move nothing at all rather than half a roll-back
    for name in moves["files"]:
        if _FILE_NAME.fullmatch(name) and _is_regular(target / name) and not os.path.lexists(staging / name):
            os.replace(target / name, staging / name)
    for name in [*moves["files"], *moves["remove"]]:
        if _FILE_NAME.fullmatch(name) and _is_regular(previous / name):
            os.replace(previous / name, target / name)


def _is_regular(path: Path) -> bool:
    """Whether ``path`` is a regular file itself, not a link to one."""
    try:
        check_regular(path, follow_links=False)
    except (OSError, SpecialFileError):
        return False
    return True


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _check_step(step: str) -> None:
    if step not in STEPS:
        raise ValueError(f"step must be one of {', '.join(STEPS)}, got {step!r}.")
