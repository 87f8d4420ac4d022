"""What the train step records about the data it read, and the check that every later step reads the same data.

A run's later steps reload its data set from disk. An ImageFolder whose class folders were
renamed or whose images were added, deleted or replaced, or a torchvision data set whose
label file was swapped, would otherwise be read silently as other data (the labels shift,
the splits mix). The train step records the class list, a SHA-256 of an ImageFolder's file
list (names and sizes, not contents), a torchvision set's label count and the split sizes;
:func:`check_same_data` refuses a later step whose data differ, naming the difference.
"""

from __future__ import annotations

from typing import Any

from pyro_dirichlet.app.rundir import RunDirectoryError
from pyro_dirichlet.data import DataSplits
from pyro_dirichlet.data.imagefolder import ImageFolderSplits

__all__ = ["check_same_data", "data_identity"]

#: At most this many class names are quoted in a sentence.
_QUOTED = 3


def data_identity(data: DataSplits) -> dict[str, Any]:
    """The manifest's record of what ``data`` holds: class list, file-list digest and count, label count, split sizes."""
    identity: dict[str, Any] = {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)}
    if isinstance(data, ImageFolderSplits):
        identity["classes"] = list(data.classes)
        if data.files_sha256:
            identity.update(files_sha256=data.files_sha256, file_count=data.file_count)
        if data.label_count:
            identity["label_count"] = data.label_count
    return identity


def check_same_data(dataset: str, recorded: dict[str, Any], data: DataSplits) -> None:
    """Refuse ``data`` when it is not what the train step read (as ``recorded`` in the manifest's ``data``).

    Only what the record holds is compared: a run recorded before a field existed is not refused for lacking it.

    Raises:
        RunDirectoryError: one sentence naming the data set and the first difference found.
    """
    now = data_identity(data)
    difference = _difference(recorded, now)
    if difference is None:
        return
    what = (f"the ImageFolder at {dataset.removeprefix('imagefolder:')}" if dataset.startswith("imagefolder:")
            else f"the data set {dataset}")
    raise RunDirectoryError(f"{what} has changed since `train`: {difference}; restore it, or start a new run on the "
                            "data as they are now with `pyro-dirichlet train`.")


def _difference(recorded: dict[str, Any], now: dict[str, Any]) -> str | None:
    if "classes" in recorded and recorded["classes"] != now.get("classes"):
        before, after = recorded["classes"], now.get("classes", [])
        if not isinstance(before, list):
            return f"class list differs: the manifest records {before!r}, not a list of classes"
        gone = [name for name in before if name not in after]
        new = [name for name in after if name not in before]
        parts = ([f"{_names(gone)} gone"] if gone else []) + ([f"{_names(new)} new"] if new else [])
        return "class list differs: " + (", ".join(parts) if parts else f"{after} now, {before} recorded")
    if "label_count" in recorded and recorded["label_count"] != now.get("label_count"):
        return f"its files hold {now.get('label_count', 0):,} labels, `train` read {_count(recorded['label_count'])}"
    if "files_sha256" in recorded and recorded["files_sha256"] != now.get("files_sha256"):
        count, before = now.get("file_count", 0), recorded.get("file_count")
        if count != before:
            return f"file list differs: {count:,} images now, {_count(before)} when `train` read it"
        return (f"file list differs: the same {count:,} images in number, but an image was renamed, moved between "
                "splits or changed size")
    for split in ("train", "validation", "test"):
        if split in recorded and recorded[split] != now[split]:
            return f"its {split} split holds {now[split]:,} images, `train` read {_count(recorded[split])}"
    return None


def _names(names: list[Any]) -> str:
    quoted = ", ".join(repr(name) for name in names[:_QUOTED])
    return f"class{'es' if len(names) > 1 else ''} {quoted}" + (f" and {len(names) - _QUOTED} more" if len(names) > _QUOTED else "")


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else repr(value)
