"""Ray itself: imported only here, started on this machine or joined to a running cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from antoni_bridge.errors import BridgeError

INSTALL_HINT = "install the cohort extra: pip install 'antoni-bridge[cohort]'"


def import_ray() -> Any:
    """The `ray` module, or one sentence saying how to get it."""
    try:
        import ray
    except ImportError:
        raise BridgeError("Cohort runs need Ray, which is not installed.", INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class RaySettings:
    """Where the run happens: a local Ray (all of this machine's cores and GPUs unless limited) or a cluster."""

    address: str | None = None  # "auto" or "ray://host:10001"; None starts a local Ray
    cpus: int | None = None  # local Ray only: logical CPUs (default: every core)
    gpus: int | None = None  # local Ray only: GPUs (default: every GPU torch sees)


def start_ray(settings: RaySettings) -> tuple[Any, bool]:
    """Ray, initialised; and whether this call started it (then the caller shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    if settings.address:
        try:
            ray.init(address=settings.address, log_to_driver=True, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BridgeError(
                f"Cannot reach the Ray cluster at {settings.address} ({exc}).",
                "start it with `ray start --head` (docs/cohort.md), or leave out --ray-address for a local Ray",
            ) from None
        return ray, True
    if settings.cpus is not None and settings.cpus < 1:
        raise BridgeError(f"--cpus {settings.cpus} must be at least 1.", "leave it out to use every core")
    ray.init(
        num_cpus=settings.cpus or os.cpu_count() or 1,
        num_gpus=settings.gpus,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=True,
    )
    return ray, True


def cluster_resources(ray: Any) -> tuple[float, float]:
    """The CPUs and GPUs the run may use."""
    resources = ray.cluster_resources()
    return float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
