"""One-line notes for what a user brings to ``train``: their weights, their images, their normalisation.

A note says, once, what the tool decided on the user's behalf where the choice changes the
result: statistics it measured instead of the user's, a validation split carved from the
images a user's own network was trained on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyro_dirichlet.data.catalog import is_user_source

if TYPE_CHECKING:
    from pyro_dirichlet.app.options import TrainOptions
    from pyro_dirichlet.data import DataSplits

__all__ = ["data_notes"]


def data_notes(options: TrainOptions, data: DataSplits) -> list[str]:
    """One sentence for each choice made for the user: measured normalisation, a validation split carved from training images."""
    notes = []
    normalization: Any = getattr(data, "normalization", None)
    if is_user_source(options.dataset) and options.normalize is None and normalization is not None:
        mean, std = (",".join(f"{v:.4f}" for v in values) for values in (normalization.mean, normalization.std))
        notes.append(f"normalising with the training images' own per-channel statistics ({mean}/{std}), as --normalize "
                     "was not given; a network trained with other values needs them: --normalize "
                     "MEAN_R,MEAN_G,MEAN_B/STD_R,STD_G,STD_B.")
    if options.weights is not None and "validation" in getattr(data, "carved", ()):
        notes.append(f"the validation split ({len(data.validation):,} images), which scores the network and picks the "
                     "fine-tune epoch, is carved from the training images your --weights network was probably trained "
                     "on, so it flatters that network: give held-out images with --validation-dir DIR.")
    return notes
