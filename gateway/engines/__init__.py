"""Engine replicas on a Ray cluster: the launcher (``switchyard engine serve --ray``), the actor that
runs one ``switchyard engine serve`` per replica, and the directory process the gateway reads them
from (``gateway.routing.ray_discovery``). Only these modules import ``ray``, and only when used.
"""
