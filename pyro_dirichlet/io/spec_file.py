"""A pruned model's JSON spec on disk: its format, its size bound, and reading it without trusting it.

:mod:`pyro_dirichlet.io.serialization` writes the spec beside the safetensors weights; this
module reads one back (a regular file, at most :data:`MAX_SPEC_BYTES`, valid JSON of this
format and version with the fields a rebuild needs), refusing anything else in one sentence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyro_dirichlet.io.regular_files import SpecialFileError, read_regular

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_SPEC_BYTES", "ModelFileError", "read_spec"]

FORMAT = "pyro-dirichlet.pruned-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A saved model's files are corrupt, inconsistent, or describe something not allowed."""


MAX_SPEC_BYTES = 16 * 2**20  #: a spec describes a few hundred modules; anything larger is refused unread


def read_spec(spec_path: Path) -> dict[str, Any]:
    """The spec at ``spec_path``, checked to be a spec of this format with an architecture and a weights hash."""
    try:
        text = read_regular(spec_path, what="spec file", limit=MAX_SPEC_BYTES).decode("utf-8")
        spec = json.loads(text)
    except SpecialFileError as err:
        raise ModelFileError(str(err)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"spec file {spec_path} is not valid JSON: {err}") from err
    except RecursionError:
        raise ModelFileError(f"spec file {spec_path} is not a spec: its JSON is nested too deeply") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise ModelFileError(f"{spec_path} is not a {FORMAT} spec (format: {found!r})")
    if spec.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{spec_path} has format_version {spec.get('format_version')!r}; this version of "
            f"pyro-dirichlet reads version {FORMAT_VERSION}"
        )
    architecture = spec.get("architecture")
    if (
        not isinstance(spec.get("weights_sha256"), str)
        or not isinstance(architecture, dict)
        or not isinstance(architecture.get("class"), str)
        or not isinstance(architecture.get("modules"), list)
        or not isinstance(architecture.get("tensors"), dict)
    ):
        raise ModelFileError(
            f"{spec_path} lacks weights_sha256 or an architecture with class, modules and tensors"
        )
    return spec
