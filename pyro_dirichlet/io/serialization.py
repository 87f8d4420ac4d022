"""Save and load pruned models as safetensors weights plus a JSON architecture spec, without pickle.

A pruned model's layers no longer have their class's default widths, so the spec records every
leaf module's type (from a whitelist) and constructor arguments; loading rebuilds the model from
those, instantiating only ``nn.Sequential``, classes registered with
:func:`register_architecture`, or registered factories (for classes whose constructor needs
arguments, such as torchvision's ``ResNet``). This module imports only torch, safetensors and the standard
library, so pruned models load without Pyro installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from pyro_dirichlet.io.atomic import atomic_write, atomic_write_json
from pyro_dirichlet.io.deployment import Deployment
from pyro_dirichlet.io.factories import FactoryError, ModelFactory, import_factory
from pyro_dirichlet.io.regular_files import SpecialFileError, sha256_of
from pyro_dirichlet.io.spec_checks import check_channel_chain, check_narrowed, check_widths
from pyro_dirichlet.io.spec_file import FORMAT, FORMAT_VERSION, MAX_SPEC_BYTES, ModelFileError, read_spec as _read_spec
from pyro_dirichlet.io.weights import WeightsError, check_weight_tensors

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "load_pruned",
    "register_architecture",
    "save_pruned",
]

_SEQUENTIAL = "torch.nn.Sequential"
# The spec's class of a model a user's factory builds; the factory's path and arguments sit beside it.
_FACTORY = "factory"

ModuleClass = TypeVar("ModuleClass", bound=type)


# --- which classes may be instantiated at load time ---------------------------------------------

# key "module:qualname" -> the class, or None when registered by name and not imported yet.
_REGISTRY: dict[str, type[nn.Module] | None] = {}
# key -> a callable building the unpruned model (for classes whose constructor needs arguments).
_FACTORIES: dict[str, Callable[[], nn.Module]] = {}
# key -> (class, leaf module names) of what the factory builds, found once at save time.
_FACTORY_SHAPES: dict[str, tuple[type, frozenset[str]]] = {}


def register_architecture(
    cls: ModuleClass | str, *, factory: Callable[[], nn.Module] | None = None
) -> ModuleClass | str:
    """Allow :func:`load_pruned` to instantiate a model class. Usable as a class decorator.

    Loading calls the class with no arguments (so it must have defaults for all of them), or
    the registered ``factory``, then replaces each leaf module by one built from the saved
    spec. Containers (blocks, ``nn.Sequential`` subclasses) are built by the constructor, so
    their flags (e.g. whether a block has a residual connection) are those of the unpruned
    model.

    Args:
        cls: an ``nn.Module`` subclass, or its ``"package.module:QualName"`` key; a key lets
            :func:`load_pruned` import that module when a spec names it, without the caller
            importing it first. With ``factory``, a key naming the architecture, recorded
            in the spec (e.g. ``"torchvision.models:resnet18"``).
        factory: a callable with no arguments that builds the unpruned model, for classes
            whose constructor needs arguments. :func:`save_pruned` picks the factory whose
            model has the same class and module names as the one saved (or the one named
            by its ``architecture`` argument); :func:`load_pruned` calls it.

    Returns:
        ``cls`` unchanged.

    Example:
        >>> import torchvision  # doctest: +SKIP
        >>> register_architecture(
        ...     "torchvision.models:resnet18",
        ...     factory=lambda: torchvision.models.resnet18(num_classes=10))  # doctest: +SKIP

    Example:
        >>> @register_architecture
        ... class TinyNet(nn.Module):
        ...     def __init__(self, width=8):
        ...         super().__init__()
        ...         self.fc1, self.fc2 = nn.Linear(4, width), nn.Linear(width, 2)
        ...     def forward(self, x):
        ...         return self.fc2(torch.relu(self.fc1(x)))
    """
    if factory is not None:
        if not isinstance(cls, str) or not cls:
            raise TypeError(
                "with factory=..., cls must be a key naming the architecture, such as "
                f"'torchvision.models:resnet18', got {cls!r}"
            )
        if not callable(factory):
            raise TypeError(f"factory must be a callable with no arguments, got {factory!r}")
        _FACTORIES[cls] = factory
        _FACTORY_SHAPES.pop(cls, None)
        return cls
    if isinstance(cls, str):
        module, _, qualname = cls.partition(":")
        if not module or not qualname:
            raise ValueError(f"cls must be a class or a 'package.module:QualName' key, got {cls!r}")
        _REGISTRY.setdefault(cls, None)
        return cls
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"cls must be an nn.Module subclass, got {cls!r}")
    required = [
        name
        for name, parameter in inspect.signature(cls).parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        raise TypeError(
            f"cls {cls.__qualname__} cannot be registered: load_pruned instantiates it with no "
            f"arguments, but {required} have no default"
        )
    _REGISTRY[_class_key(cls)] = cls
    return cls


def _class_key(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _factory_shape(key: str) -> tuple[type, frozenset[str]]:
    if key not in _FACTORY_SHAPES:
        built = _FACTORIES[key]()
        _FACTORY_SHAPES[key] = (type(built), frozenset(_leaf_names(built)))
    return _FACTORY_SHAPES[key]


def _leaf_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if name and next(module.children(), None) is None]


def _constructor(key: str) -> tuple[Callable[[], nn.Module], str]:
    """The zero-argument callable that builds the unpruned model a spec names, and its name."""
    if key in _FACTORIES:
        return _FACTORIES[key], f"the factory registered as {key!r}"
    cls = _registered_class(key)
    return cls, f"{cls.__qualname__}()"


def _registered_class(key: str) -> type[nn.Module]:
    # Files saved before models/ installed as pyro_dirichlet.models name their class
    # "models.lenet:LeNet5Caffe"; only an already-registered new name is accepted for them.
    if key not in _REGISTRY and key.startswith("models.") and f"pyro_dirichlet.{key}" in _REGISTRY:
        key = f"pyro_dirichlet.{key}"
    if key not in _REGISTRY and re.fullmatch(r"pyro_dirichlet\.models(\.[A-Za-z_]\w*)+:[A-Za-z_]\w*", key):
        # The package's own architectures register themselves when their module is imported;
        # only modules inside pyro_dirichlet.models are imported for a spec, nothing it names elsewhere.
        with contextlib.suppress(ImportError):
            importlib.import_module(key.partition(":")[0])
    if key not in _REGISTRY:
        raise ModelFileError(
            f"the spec names model class {key!r}, which is not registered; import the module "
            "that defines it (decorated with @register_architecture) before loading, or "
            f"call register_architecture({key!r}) (or register_architecture({key!r}, "
            "factory=...) for a model built by a factory)"
        )
    cls = _REGISTRY[key]
    if cls is None:
        module_name, _, qualname = key.partition(":")
        try:
            found: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError) as err:
            raise ModelFileError(f"registered model class {key!r} cannot be imported: {err}") from err
        if not (isinstance(found, type) and issubclass(found, nn.Module)) or _class_key(found) != key:
            raise ModelFileError(f"{key!r} does not name an nn.Module subclass")
        cls = _REGISTRY[key] = found
    return cls


# --- the whitelist of leaf modules and their constructor arguments ------------------------------


def _attributes(*names: str) -> Callable[[nn.Module], dict[str, Any]]:
    return lambda module: {name: getattr(module, name) for name in names}


def _with_bias_flag(*names: str) -> Callable[[nn.Module], dict[str, Any]]:
    return lambda module: {
        **{name: getattr(module, name) for name in names},
        "bias": module.bias is not None,
    }


def _batchnorm_args(module: nn.Module) -> dict[str, Any]:
    args = _attributes("num_features", "eps", "momentum", "affine", "track_running_stats")(module)
    # Newer torch allows an affine BatchNorm without bias; record that only when it happens,
    # so specs stay loadable by torch versions without the argument.
    if module.affine and module.bias is None:
        args["bias"] = False
    return args


_INPLACE = _attributes("inplace")
_NO_ARGS = _attributes()

# type name -> (class, constructor arguments read off an instance)
_LEAVES: dict[str, tuple[type[nn.Module], Callable[[nn.Module], dict[str, Any]]]] = {
    "Conv2d": (
        nn.Conv2d,
        _with_bias_flag(
            "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
            "groups", "padding_mode",
        ),
    ),
    "Linear": (nn.Linear, _with_bias_flag("in_features", "out_features")),
    "BatchNorm1d": (nn.BatchNorm1d, _batchnorm_args),
    "BatchNorm2d": (nn.BatchNorm2d, _batchnorm_args),
    "ReLU": (nn.ReLU, _INPLACE),
    "ReLU6": (nn.ReLU6, _INPLACE),
    "LeakyReLU": (nn.LeakyReLU, _attributes("negative_slope", "inplace")),
    "GELU": (nn.GELU, _attributes("approximate")),
    "SiLU": (nn.SiLU, _INPLACE),
    "ELU": (nn.ELU, _attributes("alpha", "inplace")),
    "Hardtanh": (nn.Hardtanh, _attributes("min_val", "max_val", "inplace")),
    "Hardswish": (nn.Hardswish, _INPLACE),
    "Hardsigmoid": (nn.Hardsigmoid, _INPLACE),
    "Mish": (nn.Mish, _INPLACE),
    "Softplus": (nn.Softplus, _attributes("beta", "threshold")),
    "Sigmoid": (nn.Sigmoid, _NO_ARGS),
    "Tanh": (nn.Tanh, _NO_ARGS),
    "Softmax": (nn.Softmax, _attributes("dim")),
    "LogSoftmax": (nn.LogSoftmax, _attributes("dim")),
    "MaxPool1d": (
        nn.MaxPool1d,
        _attributes("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    ),
    "MaxPool2d": (
        nn.MaxPool2d,
        _attributes("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    ),
    "AvgPool1d": (
        nn.AvgPool1d,
        _attributes("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    ),
    "AvgPool2d": (
        nn.AvgPool2d,
        _attributes(
            "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"
        ),
    ),
    "AdaptiveAvgPool1d": (nn.AdaptiveAvgPool1d, _attributes("output_size")),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, _attributes("output_size")),
    "AdaptiveMaxPool1d": (nn.AdaptiveMaxPool1d, _attributes("output_size", "return_indices")),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, _attributes("output_size", "return_indices")),
    "Flatten": (nn.Flatten, _attributes("start_dim", "end_dim")),
    "Dropout": (nn.Dropout, _attributes("p", "inplace")),
    "Dropout1d": (nn.Dropout1d, _attributes("p", "inplace")),
    "Dropout2d": (nn.Dropout2d, _attributes("p", "inplace")),
    "AlphaDropout": (nn.AlphaDropout, _attributes("p", "inplace")),
    "Identity": (nn.Identity, _NO_ARGS),
    # An empty Sequential is a leaf (an identity); a non-empty one is a container.
    "Sequential": (nn.Sequential, _NO_ARGS),
}
_ALLOWED_ARGS = {
    name: set(inspect.signature(cls).parameters) - {"device", "dtype", "args", "kwargs"}
    for name, (cls, _) in _LEAVES.items()
}


def _type_name(module: nn.Module) -> str | None:
    name = type(module).__name__
    # Exact class match: a subclass may override forward, which the spec cannot capture.
    if name in _LEAVES and _LEAVES[name][0] is type(module):
        return name
    return None


# --- save ----------------------------------------------------------------------------------------


def save_pruned(
    model: nn.Module,
    path_prefix: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    architecture: str | None = None,
    factory: ModelFactory | str | Callable[..., nn.Module] | None = None,
    factory_args: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Save a (pruned) model as ``<prefix>.safetensors`` and ``<prefix>.json``, without pickle.

    The weights file holds the state dict; the JSON spec holds the architecture (every leaf
    module's type and constructor arguments, and the model class), the tensors' shapes, the
    weights file's SHA-256, and ``metadata``. Both are written atomically, weights first, so a
    spec on disk always describes a complete weights file.

    Args:
        model: an ``nn.Sequential`` or an instance of a class registered with
            :func:`register_architecture`, whose leaf modules are all whitelisted types.
        path_prefix: path without extension; its directory must exist.
        metadata: JSON-serialisable information stored with the spec, e.g.
            ``{"kept_channels": {"conv1": 5, "conv2": 19, "fc1": 54}}``.
        architecture: the key of a factory registered with :func:`register_architecture`
            that builds this model's architecture; None picks the registered class, or the
            factory whose model has the same class and module names.
        factory: the user's factory that builds the unpruned model: its
            ``"module:callable"`` path (``"mynets:factory"``), the module-level callable
            itself (``mynets.factory``) or a :class:`~pyro_dirichlet.io.factories.ModelFactory`;
            its path and ``factory_args`` are recorded in the spec, and :func:`load_pruned`
            then needs it named again.
        factory_args: keyword arguments the factory is called with at load time (plain
            values); the leaf modules' widths come from the spec either way.

    Returns:
        The paths of the weights file and the spec file.

    Raises:
        ValueError: the model's class is not registered, or a module type is not whitelisted.
        TypeError: ``metadata`` is not a JSON-serialisable mapping.

    Example:
        >>> weights, spec = save_pruned(pruned, tmp / "lenet5-pruned",
        ...                             metadata={"kept_channels": {"conv1": 5}})  # doctest: +SKIP
        >>> model = load_pruned(tmp / "lenet5-pruned")  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    metadata = _checked_metadata(metadata)
    if factory is not None:
        factory = ModelFactory.named(factory, factory_args)
    architecture = _describe_architecture(model, architecture, factory)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    architecture["tensors"] = {
        name: {"dtype": _dtype_name(tensor.dtype), "shape": list(tensor.shape)}
        for name, tensor in state.items()
    }
    payload = safetensors.torch.save(state, metadata={"format": "pt"})

    weights_path, spec_path = _paths(path_prefix)
    with atomic_write(weights_path, "wb") as handle:
        handle.write(payload)
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "weights_sha256": hashlib.sha256(payload).hexdigest(),
        "metadata": metadata,
        "created_with": {"torch": torch.__version__, "safetensors": safetensors.__version__},
    }
    atomic_write_json(spec_path, spec)
    return weights_path, spec_path


def _paths(path_prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    if not isinstance(path_prefix, (str, os.PathLike)):
        raise TypeError(f"path_prefix must be a str or path, got {type(path_prefix).__name__}")
    prefix = os.fspath(path_prefix)
    return Path(f"{prefix}.safetensors"), Path(f"{prefix}.json")


def _checked_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    try:
        # A round trip both checks serialisability and detaches the spec from caller objects.
        return json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from err


def _architecture_key(model: nn.Module, requested: str | None) -> str:
    """The spec's ``class``: nn.Sequential, a registered class, or a registered factory."""
    leaves = frozenset(_leaf_names(model))
    if requested is not None:
        if not isinstance(requested, str) or requested not in _FACTORIES:
            raise ValueError(
                f"architecture={requested!r} is not a factory registered with "
                f"register_architecture(key, factory=...); registered: {sorted(_FACTORIES)}"
            )
        built_type, built_leaves = _factory_shape(requested)
        if built_type is not type(model) or built_leaves != leaves:
            raise ValueError(
                f"architecture={requested!r} builds a {built_type.__qualname__} whose modules "
                f"differ from model's ({type(model).__qualname__}): missing "
                f"{sorted(leaves - built_leaves)[:5]}, extra {sorted(built_leaves - leaves)[:5]}"
            )
        return requested
    if type(model) is nn.Sequential:
        return _SEQUENTIAL
    class_key = _class_key(type(model))
    # None: registered by name, so load_pruned imports the class this key names.
    if class_key in _REGISTRY and _REGISTRY[class_key] in (None, type(model)):
        return class_key
    for key in _FACTORIES:
        if _factory_shape(key) == (type(model), leaves):
            return key
    raise ValueError(
        f"model is a {type(model).__qualname__}, which load_pruned could not rebuild: "
        "decorate the class with @register_architecture, register a factory with "
        "register_architecture('package:name', factory=...) (or save an nn.Sequential)"
    )


def _factory_key(model: nn.Module, factory: ModelFactory) -> str:
    """``_FACTORY`` when ``factory`` builds a model of ``model``'s class and module names (so load_pruned can rebuild it)."""
    built = factory.build()
    missing, extra = set(_leaf_names(model)) - set(_leaf_names(built)), set(_leaf_names(built)) - set(_leaf_names(model))
    if type(built) is not type(model) or missing or extra:
        raise ValueError(f"factory {factory.path!r} builds a {type(built).__qualname__} whose modules differ from "
                         f"model's ({type(model).__qualname__}): missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
    return _FACTORY


def _describe_architecture(
    model: nn.Module, requested: str | None = None, factory: ModelFactory | None = None
) -> dict[str, Any]:
    class_key = _factory_key(model, factory) if factory is not None else _architecture_key(model, requested)
    modules = []
    for name, module in model.named_modules():
        if not name:
            continue
        if next(module.children(), None) is not None:
            if class_key == _SEQUENTIAL:
                if type(module) is not nn.Sequential:
                    raise ValueError(
                        f"module '{name}' is a {type(module).__name__} inside an nn.Sequential; "
                        "load_pruned can only rebuild nested nn.Sequential containers there "
                        "(register a model class instead)"
                    )
                modules.append({"name": name, "type": "Sequential", "args": {}})
            continue  # containers of a registered class are built by its constructor
        type_name = _type_name(module)
        if type_name is None:
            raise ValueError(
                f"module '{name}' is a {type(module).__qualname__}, which is not among the types "
                f"load_pruned can rebuild: {', '.join(sorted(_LEAVES))}"
            )
        args = _LEAVES[type_name][1](module)
        modules.append({"name": name, "type": type_name, "args": _jsonable(args)})
    if factory is not None:
        return {"class": class_key, "factory": factory.to_dict(), "modules": modules}
    return {"class": class_key, "modules": modules}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    return value


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- load ----------------------------------------------------------------------------------------


def load_pruned(
    path_prefix: str | os.PathLike[str],
    *,
    map_location: str | torch.device = "cpu",
    factory: str | Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned`, in eval mode, with its spec's metadata as ``model.deployment``.

    ``model.deployment`` (a :class:`~pyro_dirichlet.io.deployment.Deployment`) holds the
    preprocessing, class names and source network a run recorded, and the whole metadata.

    Nothing is unpickled and no code is imported except a registered class's module. Before
    any weight is loaded, the weights file's SHA-256 must match the spec, the format and
    version must be known, every module type must be whitelisted, every module's arguments
    must be those its class or factory builds there with widths no larger (an ``nn.Sequential``'s
    must pass channels on consistently; :mod:`pyro_dirichlet.io.spec_checks`), and the tensor shapes
    of the spec, the rebuilt architecture and the weights file must agree.

    Args:
        path_prefix: the prefix given to :func:`save_pruned`.
        map_location: device to put the parameters and buffers on.
        factory: for a model saved with ``save_pruned(..., factory=...)``, the factory
            that builds it, named again by the caller: its ``"package.module:name"`` path or
            the callable itself. It must be the recorded one (the same name, or a callable
            of that name defined in a submodule of the recorded module, as
            ``torchvision.models.resnet.resnet18`` is ``torchvision.models:resnet18``); it
            is called with the recorded keyword arguments. A factory path read from the
            spec is never imported.

    Raises:
        ModelFileError: the files are inconsistent, modified, or describe something not
            allowed; a factory-built model loaded without ``factory`` or with another one;
            a file is a FIFO, a device or anything but a regular file (refused unread).
        FileNotFoundError: a file is missing.

    Example:
        >>> model = load_pruned("runs/demo/lenet5-pruned")  # doctest: +SKIP
    """
    weights_path, spec_path = _paths(path_prefix)
    spec = _read_spec(spec_path)
    try:  # a FIFO or /dev/zero would block or never end: refused unread
        digest = sha256_of(weights_path, what="weights file")
    except SpecialFileError as error:
        raise ModelFileError(str(error)) from None
    if digest != spec["weights_sha256"]:
        raise ModelFileError(
            f"weights file {weights_path} was modified or does not belong to this spec "
            f"({spec_path}): its SHA-256 is {digest}, the spec records {spec['weights_sha256']}"
        )
    architecture = spec["architecture"]
    if architecture["class"] == _FACTORY:
        architecture = {**architecture, "build": _named_factory(architecture.get("factory"), factory, spec_path)}
    elif factory is not None:
        raise ModelFileError(f"{spec_path} was not saved from a model factory; load it without factory=")
    # Shapes first, on the meta device (no memory): a small spec asking for a huge layer is
    # refused against the weights file's header before anything is allocated.
    with torch.device("meta"):
        skeleton = _rebuild(architecture)
    _check_tensors(architecture["tensors"], skeleton, _stored_shapes(weights_path))
    model = _rebuild(architecture)
    state = safetensors.torch.load_file(weights_path, device="cpu")
    _check_tensors(architecture["tensors"], model, state)
    try:  # dense, finite, of the dtype save_pruned recorded (a float64 model stays float64)
        check_weight_tensors(state, f"weights file {weights_path}", dtypes={n: i.get("dtype") for n, i in architecture["tensors"].items()})
    except WeightsError as error:
        raise ModelFileError(str(error).rstrip(".")) from None
    # assign=True keeps the saved dtypes instead of casting into freshly allocated float32.
    model.load_state_dict(state, strict=True, assign=True)
    if not hasattr(model, "deployment"):  # never over a network's own attribute: read_deployment() reads it then
        model.deployment = Deployment.from_metadata(spec["metadata"] if isinstance(spec.get("metadata"), dict) else {})
    return model.to(map_location).eval()


def _stored_shapes(path: Path) -> dict[str, Tensor]:
    """The weights file's tensors as meta tensors: names and shapes from its header, no data read."""
    with safetensors.safe_open(str(path), "pt") as handle:
        return {name: torch.empty(handle.get_slice(name).get_shape(), device="meta") for name in handle.keys()}



def _named_factory(recorded: Any, named: str | Callable[..., nn.Module] | None, spec_path: Path) -> tuple[Callable[[], nn.Module], str]:
    """The recorded factory as the caller names it again, with the recorded arguments; never imported from the spec."""
    try:
        if not isinstance(recorded, dict):
            raise FactoryError("no factory path and arguments")
        spec = ModelFactory(recorded.get("path"), recorded.get("args", {}))
    except (FactoryError, TypeError) as err:
        raise ModelFileError(f"{spec_path} names a model factory it does not describe: {err}") from None
    try:
        return spec.named_again(named, where=str(spec_path)).build, f"the factory {spec.path!r}"
    except FactoryError as err:
        raise ModelFileError(str(err).rstrip(".")) from None


def _rebuild(architecture: dict[str, Any]) -> nn.Module:
    entries = architecture["modules"]
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not entry["name"]
            or not isinstance(entry.get("args"), dict)
        ):
            raise ModelFileError(f"malformed module entry in the spec: {entry!r}")
        if entry.get("type") not in _LEAVES:
            raise ModelFileError(
                f"module '{entry['name']}' has type {entry.get('type')!r}, which is not among "
                f"the types load_pruned rebuilds: {', '.join(sorted(_LEAVES))}"
            )
        check_widths(entry)
    if architecture["class"] == _SEQUENTIAL:
        return _rebuild_sequential(entries)
    if "build" in architecture:
        return _rebuild_registered(*architecture["build"], entries)
    return _rebuild_registered(*_constructor(architecture["class"]), entries)


def _rebuild_sequential(entries: list[dict[str, Any]]) -> nn.Module:
    root = nn.Sequential()
    built: dict[str, nn.Module] = {"": root}
    for entry in entries:
        parent_name, _, child = entry["name"].rpartition(".")
        parent = built.get(parent_name)
        if type(parent) is not nn.Sequential or entry["name"] in built:
            raise ModelFileError(
                f"module '{entry['name']}' does not fit the nesting of the spec's nn.Sequential"
            )
        built[entry["name"]] = module = _build(entry)
        try:
            parent.add_module(child, module)
        except (KeyError, TypeError) as err:  # a name such as "training", "forward" or "__class__"
            raise ModelFileError(f"module '{entry['name']}' has a name nn.Sequential cannot hold ({err})") from None
    check_channel_chain([(name, _type_name(module), _arguments(module)) for name, module in root.named_modules() if name])
    return root


def _rebuild_registered(
    build: Callable[[], nn.Module], description: str, entries: list[dict[str, Any]]
) -> nn.Module:
    model = build()
    leaves = set(_leaf_names(model))
    listed = {entry["name"] for entry in entries}
    if listed != leaves:
        raise ModelFileError(
            f"the spec's modules do not match {description}: missing from the spec "
            f"{sorted(leaves - listed)}, unknown to the class {sorted(listed - leaves)}"
        )
    modules = {entry["name"]: _build(entry) for entry in entries}
    check_narrowed([(name, _type_name(module), _arguments(module)) for name, module in modules.items()],
                   lambda name: _described(model.get_submodule(name)), description)
    for name, module in modules.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module)
    return model


def _described(module: nn.Module) -> tuple[str, dict[str, Any]]:
    """A module's type name and constructor arguments as the spec records them (``{}`` for a type not whitelisted)."""
    kind = _type_name(module)
    return (type(module).__qualname__, {}) if kind is None else (kind, _arguments(module))


def _arguments(module: nn.Module) -> dict[str, Any]:
    return _jsonable(_LEAVES[_type_name(module)][1](module))


def _build(entry: dict[str, Any]) -> nn.Module:
    cls = _LEAVES[entry["type"]][0]
    unknown = set(entry["args"]) - _ALLOWED_ARGS[entry["type"]]
    if unknown:
        raise ModelFileError(
            f"module '{entry['name']}' ({entry['type']}) has unknown constructor arguments "
            f"{sorted(unknown)}"
        )
    args = {key: _from_json(value) for key, value in entry["args"].items()}
    try:
        return cls(**args)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ModelFileError(
            f"module '{entry['name']}' cannot be built as {entry['type']}({args}): {err}"
        ) from err


def _from_json(value: Any) -> Any:
    # Modules store sizes as tuples; JSON turns them into lists.
    if isinstance(value, list):
        return tuple(_from_json(item) for item in value)
    if isinstance(value, (dict, type(None), bool, int, float, str)):
        return value
    raise ModelFileError(f"unexpected value in the spec: {value!r}")


def _check_tensors(
    spec_tensors: dict[str, Any], model: nn.Module, state: dict[str, Tensor]
) -> None:
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    stored = {name: tuple(tensor.shape) for name, tensor in state.items()}
    listed = {}
    for name, info in spec_tensors.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list):
            raise ModelFileError(f"the spec's entry for tensor '{name}' has no shape")
        listed[name] = tuple(shape)
    for source, shapes in (("the spec's tensor list", listed), ("the rebuilt architecture", expected)):
        for name in sorted(shapes.keys() | stored.keys()):
            if name not in stored:
                raise ModelFileError(f"tensor '{name}' is in {source} but not in the weights file")
            if name not in shapes:
                raise ModelFileError(f"tensor '{name}' is in the weights file but not in {source}")
            if shapes[name] != stored[name]:
                raise ModelFileError(
                    f"tensor '{name}': {source} gives shape {shapes[name]}, the weights file "
                    f"holds {stored[name]}"
                )
