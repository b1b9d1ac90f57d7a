"""Ray as the engine behind `--executor ray`: one machine's work spread over a cluster.

graphkit's long jobs split into independent pieces whose results merge exactly: the
calibration statistics of disjoint shards of the samples (histograms add up), the
predictions of shards of the evaluation crops, the sensitivity of groups of layers. Each
piece is a Ray task; large inputs (the model, the held-out arrays) are put in Ray's
object store once and every task reads them from there, not from disk. Results are
merged in shard order, so they are the same as one process's.

The cluster is the one in `RAY_ADDRESS` (or `address`); without either, a local Ray is
started with one worker per core. The samples themselves are read by the tasks from the
paths in the input spec: on a real cluster, put images and annotations where every node
sees them at the same path (a shared file system), as with any Ray data job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from graphkit.errors import GraphkitError

EXECUTORS = ("local", "ray")


def ray_module():
    """`ray`, or one sentence saying how to install it."""
    try:
        import ray
    except ImportError:
        raise GraphkitError(
            "--executor ray needs Ray: pip install 'graphkit[ray]' (or pip install ray)"
        ) from None
    return ray


def connect(address: str | None = None) -> int:
    """Join the cluster at `address` / RAY_ADDRESS, or start a local one; returns the
    number of CPUs Ray can schedule on (the default number of shards)."""
    ray = ray_module()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(
                    num_cpus=os.cpu_count() or 1,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GraphkitError(
                f"cannot start or join Ray at {address or 'local'}: {msg}"
            ) from None
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_tasks(
    fn: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    *,
    shared: dict[str, Any] | None = None,
    on_done: Callable[[int, Any], None] | None = None,
    address: str | None = None,
    num_cpus: float = 1,
) -> list[Any]:
    """`fn(*call, **shared)` for every call as Ray tasks; results in the order of `calls`.

    `shared` values go into the object store once and reach every task by reference.
    `on_done(i, result)` runs in this process as each task finishes (progress). A task
    that raises GraphkitError fails the whole run with the same sentence."""
    ray = ray_module()
    connect(address)
    refs = {k: ray.put(v) for k, v in (shared or {}).items()}
    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(_call)
    pending = {remote.remote(fn, call, refs): i for i, call in enumerate(calls)}
    results: list[Any] = [None] * len(calls)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            kind, value = ray.get(done[0])
            if kind == "error":
                raise GraphkitError(value)
            results[i] = value
            if on_done is not None:
                on_done(i, value)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return results


def _call(fn: Callable[..., Any], call: tuple[Any, ...], shared: dict[str, Any]):
    """Inside a task: resolve the shared references, run, and report errors as values
    (a GraphkitError keeps its one sentence instead of a remote traceback)."""
    import ray

    values = {k: ray.get(v) for k, v in shared.items()}
    try:
        return "ok", fn(*call, **values)
    except GraphkitError as exc:
        return "error", str(exc)


__all__ = ["EXECUTORS", "connect", "ray_module", "run_tasks"]
