"""The deployments behind one model name, split into priority tiers, and the pick itself.

A pick walks tiers from the lowest ``order`` up and, inside the first tier that has any
deployment available (not cooled down, within its own rpm/tpm/parallel limits, not already
tried by this request), asks the strategy to choose. Only when every untried deployment is
unavailable does a retry go back to one that already failed this request.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING

from gateway.routing.state import DeploymentState
from gateway.routing.strategies import RoutingStrategy

if TYPE_CHECKING:
    from gateway.routing.deployment import Deployment


@dataclass(slots=True)
class Tier:
    """Deployments sharing one ``order``, with the weighted-shuffle table precomputed."""

    order: int
    deployments: list[DeploymentState]
    cum_weights: list[float] = field(init=False)
    total_weight: float = field(init=False)

    def __post_init__(self) -> None:
        weights = [max(d.weight, 0.0) for d in self.deployments]
        if not any(weights):
            # All-zero weights would make every pick fail; treat them as "no preference".
            weights = [1.0] * len(weights)
            for d in self.deployments:
                d.weight = 1.0
        self.cum_weights = list(accumulate(weights))
        self.total_weight = self.cum_weights[-1]


@dataclass(slots=True)
class Unavailable:
    """Why no deployment could be picked.

    ``retry_at`` is the unix time the earliest cooled-down deployment comes back (0 if none is
    cooled down); ``limited`` counts deployments skipped for their own rpm/tpm/parallel limits.
    """

    cooled: int
    limited: int
    retry_at: float


class ModelGroup:
    """All deployments of one public model name.

    ``concrete`` is None but for a name served by a wildcard entry (``view``): there it maps each
    deployment id to the deployment with that name's upstream model, since the states (cooldowns,
    limits) are the wildcard entry's own and shared by every name it serves.
    """

    __slots__ = ("by_id", "concrete", "deployments", "name", "tiers")

    def __init__(self, name: str, deployments: Sequence[DeploymentState]) -> None:
        if not deployments:
            raise ValueError(f"model {name!r} has no deployments")
        self.name = name
        self.deployments = list(deployments)
        self.by_id = {d.id: d for d in self.deployments}
        orders = sorted({d.order for d in self.deployments})
        self.tiers = [Tier(o, [d for d in self.deployments if d.order == o]) for o in orders]
        self.concrete: dict[str, Deployment] | None = None

    def view(self, name: str, concrete: dict[str, Deployment]) -> ModelGroup:
        """This group's deployments and tiers (shared, not copied) serving ``name`` with ``concrete``."""
        group = ModelGroup.__new__(ModelGroup)
        group.name = name
        group.deployments = self.deployments
        group.by_id = self.by_id
        group.tiers = self.tiers
        group.concrete = concrete
        return group

    def pick(
        self,
        strategy: RoutingStrategy,
        now: float,
        *,
        exclude: Collection[DeploymentState] = (),
        stream: bool = False,
    ) -> DeploymentState | Unavailable:
        """Choose a deployment for one attempt, or say why none is available."""
        minute = int(now // 60)
        for avoid in (exclude, ()) if exclude else ((),):
            for tier in self.tiers:
                ds = tier.deployments
                avail: list[DeploymentState] = []
                # Inlined DeploymentState.within_limits: this loop is the per-request hot path.
                for d in ds:
                    if d.cooldown_until > now:
                        continue
                    if d.max_parallel is not None and d.in_flight >= d.max_parallel:
                        continue
                    if (
                        d.has_limits
                        and d.minute == minute
                        and (
                            (d.rpm is not None and d.minute_requests >= d.rpm)
                            or (d.tpm is not None and d.minute_tokens >= d.tpm)
                        )
                    ):
                        continue
                    if avoid and d in avoid:
                        continue
                    avail.append(d)
                if avail:
                    complete = len(avail) == len(ds)
                    return strategy.choose(tier, ds if complete else avail, complete, stream, minute)
        return self.unavailable(now)

    def unavailable(self, now: float) -> Unavailable:
        """Summarise why nothing is available (slow path, only after a failed pick)."""
        minute = int(now // 60)
        cooled = limited = 0
        retry_at = 0.0
        for d in self.deployments:
            if d.cooldown_until > now:
                cooled += 1
                if retry_at == 0.0 or d.cooldown_until < retry_at:
                    retry_at = d.cooldown_until
            elif not d.within_limits(minute):
                limited += 1
        return Unavailable(cooled=cooled, limited=limited, retry_at=retry_at)

    def any_available(self, now: float, exclude: Collection[DeploymentState] = ()) -> bool:
        """Whether a deployment other than those in ``exclude`` could take a request now."""
        minute = int(now // 60)
        for d in self.deployments:
            if d.cooldown_until <= now and d.within_limits(minute) and d not in exclude:
                return True
        return False
