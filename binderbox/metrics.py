"""Prometheus metrics, under BinderHub's names so existing dashboards work.

The pipeline records builds and launches here; ``/metrics`` exposes
:data:`REGISTRY` in the Prometheus text format.  A private registry keeps
our figures apart from JupyterHub's when both live in one process (tests).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

_TIME_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))

BUILD_TIME = Histogram(
    "binderhub_build_time_seconds",
    "Histogram of build times",
    ["status"],
    buckets=_TIME_BUCKETS,
    registry=REGISTRY,
)
LAUNCH_TIME = Histogram(
    "binderhub_launch_time_seconds",
    "Histogram of launch times",
    ["status", "retries"],
    buckets=_TIME_BUCKETS,
    registry=REGISTRY,
)
BUILD_COUNT = Counter(
    "binderhub_build_count",
    "Counter of builds by repo",
    ["status", "provider", "repo"],
    registry=REGISTRY,
)
LAUNCH_COUNT = Counter(
    "binderhub_launch_count",
    "Counter of launches by repo",
    ["status", "provider", "repo"],
    registry=REGISTRY,
)
BUILDS_INPROGRESS = Gauge(
    "binderhub_inprogress_builds", "Builds currently in progress", registry=REGISTRY
)
LAUNCHES_INPROGRESS = Gauge(
    "binderhub_inprogress_launches", "Launches currently in progress", registry=REGISTRY
)
CACHE_HITS = Counter(
    "binderbox_environment_cache_hits",
    "Launches whose environment was already built",
    registry=REGISTRY,
)


def render() -> bytes:
    """The current metrics in the Prometheus text format."""
    return generate_latest(REGISTRY)
