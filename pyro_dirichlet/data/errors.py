"""What a data loader raises when a data set cannot be read, each with one message that says how to fix it."""

from __future__ import annotations

from pathlib import Path

from pyro_dirichlet.data.root import DATA_ENV_VAR

__all__ = ["DatasetError", "DatasetMissingError"]


class DatasetError(ValueError):
    """A data set's file is there but cannot be used: corrupt, truncated or inconsistent.

    A ``ValueError``, so the command line reports it as bad input (exit status 2). The
    message is one sentence that names the file and what is wrong with it.

    Args:
        path: the offending file (or folder).
        problem: what is wrong, phrased to follow the path, e.g. ``"is truncated: ..."``.

    Example:
        >>> str(DatasetError("/data/MNIST/raw/t10k-labels-idx1-ubyte", "is empty"))
        'data file /data/MNIST/raw/t10k-labels-idx1-ubyte is empty.'
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"data file {path} {problem}.")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # The default reduction re-calls __init__ with the message alone, which would fail
        # when the error crosses a process boundary (multiprocessing, pytest-xdist).
        return type(self), (self.path, self.problem)


# Both a DatasetError (``except DatasetError`` catches every data problem) and a
# FileNotFoundError (what callers caught before DatasetError existed), as io.UnsupportedOperation
# is both an OSError and a ValueError.
class DatasetMissingError(DatasetError, FileNotFoundError):
    """A data set's files are not where the project looked for them.

    The message names the data set, the folder searched, every file expected, and the
    three ways to point the project at the data.

    Args:
        dataset: display name, e.g. ``"MNIST"``.
        root: the data folder that was searched.
        expected: every file the loader needs.
        reason: what went wrong (files missing, download failed), or ``""``.

    Example:
        >>> from pyro_dirichlet.data import load_mnist
        >>> try:
        ...     load_mnist("/nowhere")
        ... except DatasetMissingError as error:
        ...     print(error.expected[0])
        /nowhere/MNIST/raw/train-images-idx3-ubyte
    """

    def __init__(self, dataset: str, root: Path, expected: list[Path], reason: str = "") -> None:
        # Absolute paths, so the message is unambiguous whatever the working directory.
        files = "\n".join(f"  {path.absolute()}" for path in expected)
        message = (
            f"{dataset} not found in {root.absolute()}{': ' + reason if reason else ''}.\n"
            f"Expected these files:\n{files}\n"
            "Point the project at the data in one of three ways:\n"
            "  --data-dir DIR on the command line,\n"
            f"  the {DATA_ENV_VAR}=DIR environment variable,\n"
            "  or neither, to use ./data, where torchvision downloads it when there is "
            "internet access."
        )
        # FileNotFoundError's initialiser, not DatasetError's: the message is not path + problem.
        FileNotFoundError.__init__(self, message)
        self.path = root
        self.problem = reason
        self.dataset = dataset
        self.root = root
        self.expected = expected
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, Path, list[Path], str]]:  # type: ignore[override]
        return type(self), (self.dataset, self.root, self.expected, self.reason)

