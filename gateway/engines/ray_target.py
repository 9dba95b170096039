"""A ``model_list`` entry that names engine replicas on a Ray cluster instead of one upstream:

    model_list:
      - model_name: smol
        litellm_params:
          model: ray/smol              # ray/<app>: the launcher's --ray-app
          ray_address: 10.0.0.5:6379   # the cluster's GCS address (default "auto": this machine's)
          ray_namespace: switchyard    # the launcher's --ray-namespace (default "switchyard")
          api_key: os.environ/ENGINE_KEY  # the engines' --api-key, if they have one

Every other param (timeout, rpm, max_parallel_requests, weight, ...) applies to each replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.engines.ray_replica import DEFAULT_NAMESPACE

if TYPE_CHECKING:
    from gateway.config import ModelEntry

PROVIDER = "ray"
DEFAULT_ADDRESS = "auto"
# Params of a ray/ entry that say where the replicas are, not how to call them.
LOCATION_PARAMS = ("ray_address", "ray_namespace")


@dataclass(frozen=True, slots=True)
class RayTarget:
    """Where an entry's replicas are: the app's actors in one namespace of one cluster."""

    address: str
    namespace: str
    app: str


def is_ray_entry(entry: ModelEntry) -> bool:
    return entry.params.model.startswith(PROVIDER + "/")


def ray_target(entry: ModelEntry) -> RayTarget:
    """The target of a ``ray/<app>`` entry (``is_ray_entry``)."""
    extra = entry.params.model_extra or {}
    return RayTarget(
        address=str(extra.get("ray_address") or DEFAULT_ADDRESS),
        namespace=str(extra.get("ray_namespace") or DEFAULT_NAMESPACE),
        app=entry.params.model[len(PROVIDER) + 1 :],
    )
