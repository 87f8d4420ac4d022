"""The one place every reported number is measured: parameters, FLOPs, accuracy, seconds.

The CLI, the report and the benchmarks all call these functions, so they cannot disagree
about what a number means.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from pyro_dirichlet.data import BatchSource, Split, iterate_batches
from pyro_dirichlet.precision import LIBRARY_PRECISION, autocast

__all__ = [
    "Stopwatch",
    "accuracy",
    "count_flops",
    "count_parameters",
    "latency_seconds",
    "layer_costs",
    "median_seconds",
    "peak_memory_bytes",
    "peak_rss_bytes",
]


def _check_module(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements in ``model``, trainable or frozen.

    A parameter shared by two submodules counts once.

    Example:
        >>> count_parameters(nn.Linear(10, 5))
        55
    """
    return sum(parameter.numel() for parameter in _check_module(model).parameters())


def count_flops(model: nn.Module, example_input: Tensor) -> int:
    """FLOPs of one forward pass on a single example, as ``FlopCounterMode`` counts them.

    A multiply-accumulate counts as two FLOPs; convolutions and matrix products are counted,
    while bias additions, activations and pooling are not (PyTorch's convention); nor is
    ``scaled_dot_product_attention`` on the CPU, so an attention counts its projections. The model
    runs in eval mode under ``torch.no_grad()``; its training flag is restored afterwards.

    Args:
        model: the network.
        example_input: a *batched* input, leading dimension the batch; only
            ``example_input[:1]`` is run, so pass any batch (e.g. ``split.images``).

    Example:
        >>> count_flops(nn.Linear(10, 5), torch.zeros(3, 10))
        100
    """
    _check_module(model)
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a Tensor, got {type(example_input).__name__}")
    if example_input.dim() < 1 or example_input.shape[0] < 1:
        raise ValueError(
            "example_input must be a batch with at least one example along dimension 0, "
            f"got shape {tuple(example_input.shape)}"
        )
    example = example_input[:1].to(_model_device(model))
    was_training = model.training
    model.eval()
    # nn.MultiheadAttention's eval-mode fast path is one fused op FlopCounterMode does not
    # count (its projections would count 0); its regular path is what a pruned attention
    # (PrunedMultiheadAttention) runs, so both are counted alike.
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    # Imported here: 0.08 s on top of torch's own import, which commands that count no FLOPs never need.
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(example)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
        model.train(was_training)
    return int(counter.get_total_flops())


def layer_costs(model: nn.Module, names: Sequence[str], example_input: Tensor) -> dict[str, dict[str, int]]:
    """Each named module's own parameters and the FLOPs of one example through it.

    The modules' inputs are captured by forward pre-hooks during one forward pass of
    ``example_input[:1]`` (eval mode, no gradients), then each module is counted alone with
    :func:`count_parameters` and :func:`count_flops`, so per-layer and whole-network figures
    follow one convention.

    Args:
        model: the network.
        names: qualified module names (e.g. ``["conv1", "fc1"]``).
        example_input: a batch; only its first example is run.

    Returns:
        ``{name: {"params": int, "flops": int}}`` in the order of ``names``.

    Raises:
        ValueError: a name is not a submodule of ``model``, or the forward pass never calls it.

    Example:
        >>> net = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
        >>> layer_costs(net, ["0", "2"], torch.zeros(3, 10))
        {'0': {'params': 55, 'flops': 100}, '2': {'params': 12, 'flops': 20}}
    """
    _check_module(model)
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"names {unknown} are not submodules of the model.")
    inputs: dict[str, Tensor] = {}
    handles = [
        modules[name].register_forward_pre_hook(lambda _module, args, name=name: inputs.setdefault(name, args[0]))
        for name in names
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1].to(_model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    unused = [name for name in names if name not in inputs]
    if unused:
        raise ValueError(f"modules {unused} are never called by the model's forward pass, so they have no cost to measure.")
    return {name: {"params": count_parameters(modules[name]), "flops": count_flops(modules[name], inputs[name])} for name in names}


def accuracy(
    model: nn.Module,
    split: BatchSource,
    *,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
    precision: str = LIBRARY_PRECISION,
) -> float:
    """Fraction of ``split`` that ``model`` classifies correctly (arg-max of its output).

    ``split`` is a preloaded :class:`~pyro_dirichlet.data.Split` or any iterable of
    ``(inputs, targets)`` batches such as a ``DataLoader`` (read once, in its own batches).

    Runs in eval mode under ``torch.no_grad()`` and restores the training flag. The model
    is not moved: it must already live on ``device``.

    Args:
        model: maps a batch of images to a batch of class scores.
        split: the examples to score; must not be empty.
        batch_size: examples per forward pass over a ``Split``.
        device: where each batch is sent; ``None`` uses the device of the model's parameters.
        precision: the forward's precision, ``"fp32"``, ``"bf16"`` or ``"auto"``
            (:mod:`pyro_dirichlet.precision`); the count is exact either way.

    Returns:
        Accuracy in ``[0, 1]``.

    Example:
        >>> acc = accuracy(model, data.validation)  # doctest: +SKIP
    """
    _check_module(model)
    if isinstance(split, Split) and len(split) == 0:
        raise ValueError("split must contain at least one example to measure accuracy")
    target = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=target)
    seen = 0
    try:
        with torch.no_grad(), autocast(precision, target):
            for images, labels, _ in iterate_batches(split, batch_size, shuffle=False, name="split"):
                scores = model(images.to(target, non_blocking=True))
                # Summing on the device and reading once avoids a sync per batch on a GPU.
                correct += (scores.argmax(dim=1) == labels.to(target)).sum()
                seen += len(labels)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("split must contain at least one example to measure accuracy")
    return correct.item() / seen


def _synchronize(device: torch.device | str | None) -> None:
    # CUDA kernels run asynchronously: without a sync the clock stops before the work does.
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Context manager that records the wall time of its block in ``.seconds``.

    Args:
        device: if a CUDA device, synchronise it on entry and exit so queued GPU work is
            counted; ``None`` (or a CPU device) just reads the clock.

    Example:
        >>> with Stopwatch() as watch:
        ...     _ = sum(range(1000))
        >>> watch.seconds >= 0.0
        True
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.seconds: float = float("nan")
        self._start: float | None = None

    def __enter__(self) -> Stopwatch:
        _synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _synchronize(self.device)
        self.seconds = self.elapsed

    @property
    def elapsed(self) -> float:
        """Seconds since the block was entered, read while it is still running."""
        if self._start is None:
            raise RuntimeError("the Stopwatch has not been started: use it in a with block")
        return time.perf_counter() - self._start


def median_seconds(
    fn: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | str | None = None,
) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls.

    The median, not the mean, so one call slowed by the OS does not move the number.

    Args:
        fn: the work to time, called with no arguments.
        repeats: timed calls, at least 1.
        warmup: untimed calls first (caches, lazy initialisation), at least 0.
        device: passed to :class:`Stopwatch` so GPU work is synchronised.

    Example:
        >>> median_seconds(lambda: sum(range(1000)), repeats=3) >= 0.0
        True
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        with Stopwatch(device) as watch:
            fn()
        times.append(watch.seconds)
    return statistics.median(times)


def latency_seconds(
    model: nn.Module,
    inputs: Tensor,
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str | None = None,
    precision: str = LIBRARY_PRECISION,
) -> float:
    """Inference latency: the median seconds of one forward pass of ``model`` on the batch ``inputs``.

    The one latency every report, benchmark and study quotes. The model runs in eval mode
    under ``torch.no_grad()`` (its training flag is restored), on ``inputs`` as given: move
    both to the device first. Timed by :func:`median_seconds`, synchronising ``device``
    (default: the model's) so queued GPU work is counted.

    Args:
        model: the network.
        inputs: one batch, already on the model's device.
        repeats: timed forward passes, at least 1.
        warmup: untimed forward passes first, at least 0.
        device: the device to synchronise; ``None`` uses the model's.
        precision: the forward's precision, ``"fp32"``, ``"bf16"`` or ``"auto"`` (:mod:`pyro_dirichlet.precision`).

    Example:
        >>> latency_seconds(nn.Linear(10, 5), torch.zeros(8, 10), repeats=3) > 0.0
        True
    """
    _check_module(model)
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a Tensor, got {type(inputs).__name__}")
    target = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()

    def forward() -> None:
        with torch.no_grad(), autocast(precision, target):
            model(inputs)

    try:
        return median_seconds(forward, repeats=repeats, warmup=warmup, device=target)
    finally:
        model.train(was_training)


def peak_memory_bytes(fn: Callable[[], object], *, device: torch.device | str | None = None) -> int:
    """The most bytes of tensors ``fn()`` held at once beyond those alive when it was called.

    On a CUDA device: the growth of ``torch.cuda.max_memory_allocated`` over the memory
    allocated at entry (the caching allocator's reserve not counted). On the CPU torch
    keeps no such count, so ``fn`` runs once under ``torch.profiler`` with memory
    profiling, and the profiler's allocation records (each op's allocations net of the
    frees inside it, and the frees between ops) are summed in time order; their running
    maximum is the peak. Scratch space an op allocates and frees itself is therefore not
    counted on the CPU, nor is memory outside torch's allocator (the process's resident
    size would count both, but it depends on what the C allocator kept from earlier work).

    Example:
        >>> peak_memory_bytes(lambda: torch.ones(1 << 20).sum()) >= 4 << 20  # a 4 MiB tensor
        True
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - start)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    # Allocations are attributed to the innermost op (its "self" memory); frees outside any
    # op come as "[memory]" events with negative sizes.
    records = sorted(
        (event for event in profiler.events() if event.self_cpu_memory_usage),
        key=lambda event: event.time_range.start,
    )
    live = peak = 0
    for event in records:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def peak_rss_bytes(*, current: bool = False) -> int:
    """This process's peak resident set size in bytes (the kernel's ``VmHWM``), or its resident size now.

    Args:
        current: the resident size now (``VmRSS``) instead of the peak.

    Resident memory counts everything a process maps and touches (torch's libraries, the
    C allocator's kept pages), not only tensors; see :func:`peak_memory_bytes` for those.

    Example:
        >>> peak_rss_bytes() >= peak_rss_bytes(current=True) > 0
        True
    """
    import resource

    field = "VmRSS:" if current else "VmHWM:"
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: the peak is all getrusage says
