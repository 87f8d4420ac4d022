"""Optimiser wrappers: a :class:`~pyro.optim.PyroOptim` that acts on the gradients before another one steps.

``pyro.infer.SVI`` hands its optimiser the parameters whose gradients the loss just
computed; wrapping that optimiser is the place to change what the step does with them
(skip it, all-reduce them across processes) while the loop stays Pyro's own ``SVI.step``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from pyro.optim import PyroOptim

__all__ = ["LayerAdam", "OptimWrapper", "SkipNonFinite"]


class OptimWrapper(PyroOptim):
    """A :class:`~pyro.optim.PyroOptim` that delegates to ``optim`` (its state too), for subclasses
    to override :meth:`__call__`.

    ``SVI`` accepts only ``PyroOptim`` instances, hence the subclass; the wrapped optimiser
    keeps the per-parameter torch optimisers and their state, so ``get_state``/``set_state``
    (and checkpoints built on them) read and write the same state as without the wrapper.

    Args:
        optim: the optimiser that takes the steps, e.g. ``pyro.optim.Adam({"lr": 0.1})``.
    """

    def __init__(self, optim: PyroOptim) -> None:
        if not isinstance(optim, PyroOptim):
            raise TypeError(f"optim must be a pyro.optim.PyroOptim, got {type(optim).__name__}.")
        # PyroOptim.__init__ is not called: every piece of state lives in the wrapped optimiser.
        self.optim = optim

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        self.optim(params, *args, **kwargs)

    def get_state(self) -> dict:
        return self.optim.get_state()

    def set_state(self, state_dict: dict) -> None:
        self.optim.set_state(state_dict)


class SkipNonFinite(OptimWrapper):
    """Steps only when every gradient is finite; otherwise leaves parameters and optimiser state as they were.

    A NaN reaching the loss reaches the gradients too, and one Adam step on NaN gradients
    would leave NaN parameters and moments behind. Skipping the step keeps the last good
    guide for :class:`~pyro_dirichlet.infer.fit.FitDivergedError` to report.

    Attributes:
        skipped: whether the last call skipped its step.

    Example:
        >>> optim = SkipNonFinite(pyro.optim.Adam({"lr": 0.1}))  # doctest: +SKIP
        >>> SVI(model, guide, optim, TraceMeanField_ELBO()).step(images, labels)  # doctest: +SKIP
    """

    def __init__(self, optim: PyroOptim) -> None:
        super().__init__(optim)
        self.skipped = False

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        params = list(params)
        grads = [param.grad for param in params if param.grad is not None]
        # One check (one device sync) for all gradients, not one per parameter.
        self.skipped = bool(grads) and not bool(torch.stack([grad.isfinite().all() for grad in grads]).all())
        if not self.skipped:
            self.optim(params, *args, **kwargs)


class LayerAdam(torch.optim.Optimizer):
    """Adam whose second moment is one number per parameter tensor (one layer's
    log-concentrations), not one per coordinate.

    Adam divides each coordinate's step by that coordinate's own gradient scale, so every
    channel moves about ``lr`` per step whatever the evidence: a channel pulled only by
    the KL (a dead unit the likelihood cannot see) moves as fast as one the likelihood
    pulls hard, and a fit stopped before the optimum ranks channels by how consistently,
    not how strongly, they were pulled. One scale per layer keeps the layer's step size
    adaptive while leaving the channels' relative pulls as the gradient has them, as SGD
    would. The learning rate is multiplied by ``lrd`` after every step (as Pyro's
    ``ClippedAdam``).

    Args:
        params: the parameters (one tensor per layer).
        lr: the learning rate at the first step.
        betas: decay of the first (per coordinate) and second (per tensor) moments.
        eps: added to the second moment's square root.
        lrd: multiplies the learning rate after every step.
    """

    def __init__(self, params, lr: float = 0.1, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 lrd: float = 1.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "lrd": lrd})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros((), dtype=param.dtype, device=param.device)
                state["step"] += 1
                state["exp_avg"].mul_(beta1).add_(param.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).add_(param.grad.square().mean(), alpha=1 - beta2)
                corrected = (state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sqrt().add_(group["eps"])
                step_size = group["lr"] / (1 - beta1 ** state["step"])
                param.addcdiv_(state["exp_avg"], corrected, value=-step_size)
            group["lr"] *= group["lrd"]
        return loss
