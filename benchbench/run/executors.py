"""How a run's tasks are executed: here, one after the other, or on a Ray cluster.

An executor calls ``on_rows(task, rows)`` for each finished task and ``on_fault(task, reason)`` for a task
whose purifier broke its contract; the caller (the runner) is the only writer of the run directory. Both
executors certify a task with the ``certify(context, task)`` function the runner hands them (and a Ray
worker first rebuilds the context with ``build(config, device)``), so they give the same rows. This module
imports nothing of the runner: layers point one way.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from benchbench.errors import BenchError, PluginFault, first_line
from benchbench.run.plan import Task

OnRows = Callable[[Task, list[dict[str, Any]]], None]
OnFault = Callable[[Task, str], None]
EXECUTORS = ("local", "ray")
# A task whose worker process died (killed, out of memory, node lost) is run again this many times.
RAY_RETRIES = 3
# Seconds a TCP connection to a Ray address may take before the run is refused as unreachable.
RAY_CONNECT_TIMEOUT_S = 10.0


Certify = Callable[[Any, Task], list[dict[str, Any]]]


def run_local(context: Any, certify: Certify, tasks: Sequence[Task], on_rows: OnRows, on_fault: OnFault,
              failed: Callable[[str], bool]) -> None:
    """Certify ``tasks`` in this process, in order; tasks of a purifier that already failed are skipped."""
    for task in tasks:
        if failed(task.label):
            continue
        try:
            rows = certify(context, task)
        except PluginFault as exc:
            on_fault(task, str(exc))
            continue
        on_rows(task, rows)


@dataclass(frozen=True)
class WorkerSpec:
    """What a Ray worker needs: the run config, how to build its models and certify a task (functions,
    pickled by reference), the worker's device and torch threads."""

    config: Any  # benchbench.run.runner.RunConfig
    build: Callable[[Any, Any], Any]
    certify: Certify
    device: str
    threads: int


_contexts: dict[int, Any] = {}


def _certify_remote(spec: WorkerSpec, task: Task) -> list[dict[str, Any]] | str:
    """A Ray task: certify one task on this worker (models built once per worker process). Returns the
    rows, or the one-line reason when the purifier broke its contract."""
    import torch

    torch.set_num_threads(spec.threads)
    key = hash((repr(spec.config), spec.device))
    if key not in _contexts:
        _contexts.clear()
        _contexts[key] = spec.build(spec.config, torch.device(spec.device))
    try:
        return spec.certify(_contexts[key], task)
    except PluginFault as exc:
        return str(exc)


def check_reachable(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) Ray address that no TCP connection reaches within
    ``timeout`` seconds: ``ray.init`` would retry it for minutes, printing a warning every few seconds.
    ``None``, ``auto``, ``local`` and other forms are left to Ray."""
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BenchError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _stderr_to_null() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: Ray's C++ core logs there directly (connection retries,
    timeouts), past Python's logging, which would break one-line errors."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def ray_cluster(address: str | None = None) -> Iterator[Any]:
    """Connect to the Ray cluster at ``address`` (None starts a local one on this machine's CPUs) and yield
    the ``ray`` module; disconnect on exit when this call connected. Every failure is one BenchError line,
    and Ray's own log output is silenced while connecting, so a run can connect before it writes anything.
    """
    try:
        import ray
    except ImportError:
        raise BenchError("--executor ray needs Ray: pip install 'benchbench[ray]'") from None
    started = not ray.is_initialized()
    if started:
        check_reachable(address)
        try:
            with _stderr_to_null():
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                                   if k.startswith(("HF_", "BENCH_", "OMP_"))}})
        except Exception as exc:  # no cluster at that address, a version mismatch, …
            raise BenchError(f"cannot start or reach a Ray cluster ({address or 'local'}): "
                             f"{first_line(exc, '')}") from exc
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_ray(context: Any, certify: Certify, tasks: Sequence[Task], on_rows: OnRows, on_fault: OnFault,
            failed: Callable[[str], bool], *, build: Callable[[Any, Any], Any], address: str | None = None,
            threads: int = 1) -> None:
    """Certify ``tasks`` on a Ray cluster (``address``; None starts a local one on this machine's CPUs),
    connecting through :func:`ray_cluster` unless already connected.

    Each task asks for one GPU when the run's device is CUDA, else ``threads`` CPUs. Rows stream back as
    tasks finish; a task whose worker died is retried (``RAY_RETRIES``) and its rows arrive once.
    """
    with ray_cluster(address) as ray:
        _run_ray(ray, context, certify, tasks, on_rows, on_fault, failed, build=build, threads=threads)


def _run_ray(ray: Any, context: Any, certify: Certify, tasks: Sequence[Task], on_rows: OnRows, on_fault: OnFault,
             failed: Callable[[str], bool], *, build: Callable[[Any, Any], Any], threads: int) -> None:
    gpu = context.device.type == "cuda"
    remote = ray.remote(_certify_remote).options(
        max_retries=RAY_RETRIES, retry_exceptions=False, num_gpus=1 if gpu else 0, num_cpus=0 if gpu else threads)
    spec = ray.put(WorkerSpec(context.config, build, certify, "cuda" if gpu else "cpu", threads))
    pending = {remote.remote(spec, task): task for task in tasks}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise BenchError(f"Ray task for {task.label!r} at σ={task.sigma:g}, images {list(task.indices)} "
                                     f"failed after {RAY_RETRIES} retries: "
                                     f"{first_line(exc, '')}") from exc
                if isinstance(result, str):
                    on_fault(task, result)
                elif not failed(task.label):
                    on_rows(task, result)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
