"""Union-find over the layers whose channels are coupled (residual adds, gating products).

:class:`~pyro_dirichlet.structure.graph.TracedModel` unions two layers when their channels
meet; a group that meets channels which cannot be pruned (the output, a LayerNorm over them)
is joined to one extra element, :attr:`CouplingGroups.FIXED`, with the first reason given.
"""

from __future__ import annotations

__all__ = ["CouplingGroups"]


class CouplingGroups:
    """Union-find over layers, with one extra element for channels that cannot be pruned."""

    FIXED = ""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {self.FIXED: self.FIXED}
        self.why_fixed: dict[str, str] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb == self.FIXED:
                ra, rb = rb, ra
            self.parent[rb] = ra

    def fix(self, name: str, why: str) -> None:
        self.why_fixed.setdefault(name, why)
        self.union(self.FIXED, name)

    def is_fixed(self, name: str) -> bool:
        return self.find(name) == self.find(self.FIXED)
