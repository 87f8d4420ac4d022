"""Other packages' layers, known by qualified name so that nothing here imports the package.

timm's and Hugging Face's subclasses of Conv2d and Linear that compute what their base class
computes, and the names of their layers the op table (:mod:`pyro_dirichlet.structure.rules`)
has rows for. Importing timm or torchvision to compare classes would cost seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["LAYER_SUBCLASSES", "is_rms_norm", "RESPONSE_NORM", "SAME_PADDING", "Qualified", "layer_base", "linear_features", "qualified_class"]


@dataclass(frozen=True)
class Qualified:
    """A table key for a function of another package, by its qualified name, so that the
    table does not import the package (torchvision takes seconds to import)."""

    name: str


def qualified_class(cls: type) -> Qualified:
    """The table key of another package's module class (``timm.layers.linear.Linear``)."""
    return Qualified(f"{cls.__module__}.{cls.__qualname__}")


#: Other packages' subclasses of Conv2d and Linear that compute what their base class
#: computes on the channels (timm's Linear; its Conv2dSame, whose padding is computed from the
#: input's size, TensorFlow's "SAME", always with zeros): prunable layers and consumers like
#: their base class.
LAYER_SUBCLASSES = {
    Qualified("timm.layers.linear.Linear"): nn.Linear,
    Qualified("timm.layers.conv2d_same.Conv2dSame"): nn.Conv2d,
    Qualified("transformers.pytorch_utils.Conv1D"): nn.Linear,  # weight stored (in, out)
}
SAME_PADDING = Qualified("timm.layers.conv2d_same.Conv2dSame")
#: timm's GlobalResponseNorm (ConvNeXt V2), sliced with its channels (the op table's rule says how).
RESPONSE_NORM = Qualified("timm.layers.grn.GlobalResponseNorm")


def layer_base(module: nn.Module) -> type | None:
    """``nn.Conv2d`` or ``nn.Linear`` if ``module`` is one (or a known subclass computing the
    same), else ``None``."""
    cls = type(module)
    if cls in (nn.Conv2d, nn.Linear):
        return cls
    return LAYER_SUBCLASSES.get(qualified_class(cls))


def linear_features(module: nn.Module) -> tuple[int, int]:
    """A Linear's (or Hugging Face's transposed ``Conv1D``'s) input and output features."""
    if hasattr(module, "nf"):
        return module.nx, module.nf
    return module.in_features, module.out_features


def is_rms_norm(cls: type) -> bool:
    """A library's RMS norm over the last dimension, with one weight per feature (Hugging Face
    defines one class per model: ``LlamaRMSNorm``, ``Qwen2RMSNorm``, T5's ``T5LayerNorm``...)."""
    name = cls.__name__.lower()
    return name.endswith("rmsnorm") or name == "t5layernorm"
