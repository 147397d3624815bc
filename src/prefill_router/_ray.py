"""Ray plumbing shared by distributed encoding and offline batch routing (the ``ray`` extra).

Ray is optional: nothing here imports it at module level, and :func:`require_ray` turns its
absence into a :class:`MissingDependencyError` that holds the install command.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prefill_router.errors import ConfigError, MissingDependencyError

INSTALL_COMMAND = "pip install 'prefill-router[ray]'"
LOCAL = "local"  # the --ray value (and the default) that starts a Ray instance on this machine
# One CPU per worker: on a 135M-parameter encoder, processes scale better than torch's intra-op
# threads (benchmarks/ray_scaling.py: 2 workers x 1 CPU encode 1.10x faster than 1 worker x 2 CPUs),
# at ~1.2 GB of memory per worker (peak RSS of one encoder process); --worker-cpus trades one for the other.
DEFAULT_WORKER_CPUS = 1


def require_ray() -> Any:
    """The ``ray`` module (with Ray Data), or MissingDependencyError naming the install command."""
    try:
        ray = importlib.import_module("ray")
        importlib.import_module("ray.data")
    except ImportError as exc:
        raise MissingDependencyError(
            f"--ray needs Ray (Ray Data), which is not installed; install it with: {INSTALL_COMMAND}"
        ) from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = LOCAL) -> Iterator[Any]:
    """Connect to the Ray cluster at ``address``, or start a local one sized to this machine.

    An already initialised Ray (a notebook's, a test's) is used as it is and left running;
    a session this function started is shut down on exit. Ray Data's own progress bars and
    logs are silenced: the command line shows one progress bar of its own.

    Raises:
        MissingDependencyError: Ray is not installed. ConfigError: no cluster at ``address``.
    """
    ray = require_ray()
    _quiet_ray_data(ray)
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR}
    try:
        if address in (None, "", LOCAL):
            ray.init(num_cpus=len(os.sched_getaffinity(0)), **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"could not connect to the Ray cluster at {address!r}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class WorkerPlan:
    """How many Ray actors run an encoder and what each one holds."""

    workers: int
    cpus: float  # per worker; also its torch threads (at least 1)
    gpus: float  # per worker: 1 on a GPU cluster, else 0
    device: str  # "cuda" or "cpu"

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))

    def describe(self) -> str:
        each = f"{self.gpus:g} GPU" if self.gpus else f"{self.threads} CPU thread{'s' * (self.threads > 1)}"
        return f"{self.workers} worker{'s' * (self.workers > 1)} x {each}"


def plan_workers(
    ray: Any, *, workers: int | None = None, worker_cpus: int | None = None, device: str = "auto"
) -> WorkerPlan:
    """Size the actor pool to the cluster: one worker per GPU when it has GPUs (and ``device``
    allows), else one per ``worker_cpus`` CPUs (default 1) of the cluster.

    Raises:
        ConfigError: a count below 1, or ``device=cuda`` on a cluster without GPUs.
    """
    for name, value in (("workers", workers), ("worker_cpus", worker_cpus)):
        if value is not None and value < 1:
            raise ConfigError(f"The '{name}' option must be at least 1; got {value} instead.")
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda, but the Ray cluster has no GPUs; use --device auto or cpu")
    if gpus and device != "cpu":
        return WorkerPlan(workers=workers or gpus, cpus=1.0, gpus=1.0, device="cuda")
    each = worker_cpus or max(1, min(DEFAULT_WORKER_CPUS, cpus))
    return WorkerPlan(workers=workers or max(1, cpus // each), cpus=float(each), gpus=0.0, device="cpu")


def _quiet_ray_data(ray: Any) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
