"""Ingest on a Ray cluster: the per-scan work on Ray actors that hold the models, one writer.

``run_plan_ray(plan, stored=, write=, address=)`` has the contract of ``om3db.ingest.run_plan`` (same plan,
same skip rule, one ``write(result, settings)`` per ingested scan, one ``IngestOutcome`` per folder in
plan order), with the per-scan work (read, masks / proposals, views, crops, encoders, aggregation) done by
``workers`` Ray actors. Each actor holds the plan's encoders and SAM (shipped once through the object
store; moved to the actor's GPU when Ray gave it one) and runs ``run_plan`` on one folder at a time with
a ``write`` that hands the result back instead of committing. The results stream back as they finish;
this process alone writes, and commits them in plan order, so the database ends up exactly as a serial
ingest leaves it (the same scan and instance ids). A scan whose task fails (an exception, or its worker
died) is retried on a worker up to ``retries`` times, then reported as a ``failed`` outcome naming the
error; the other scans still commit.

``address``: ``"local"`` starts a Ray instance on this machine (``workers`` CPUs) and stops it at the end;
anything else joins an existing cluster (``"auto"``, ``"HOST:PORT"`` of its head, ``"ray://HOST:PORT"``
for Ray Client). An address that does not answer raises ``ConfigError`` naming it, before any work.
When this process is already connected to Ray (``ray.is_initialized()``), that connection is used.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .errors import ConfigError

__all__ = ["run_plan_ray", "check_ray_address", "ray_session", "DEFAULT_RETRIES"]

DEFAULT_RETRIES = 2
"""Times a failed scan is tried again before it is reported as failed."""
_PROBE_TIMEOUT_S = 5.0


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "Ray is not installed: install it with pip install 'om3db[ray]' (or pip install ray)"
        ) from exc
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a head address, or None for 'auto' / 'local'."""
    if address in ("auto", "local"):
        return None
    usage = (
        "Use 'local', 'auto', HOST:PORT of the head node (port 6379 by default) or ray://HOST:PORT "
        "(Ray Client, port 10001)"
    )
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    elif scheme != "ray":
        raise ConfigError(f"{address}: not a Ray address ({scheme}:// is not Ray's scheme). {usage}")
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ConfigError(f"{address}: not a Ray address. {usage}")
    bracketed = host.startswith("[") and host.endswith("]")
    name = host[1:-1] if bracketed else host
    if not name or any(c.isspace() or c in "/@?#[]" for c in name) or (":" in name and not bracketed):
        why = (
            "holds ':' (an IPv6 host goes in brackets: [::1]:6379)"
            if ":" in name and not bracketed
            else "is not a host name"
        )
        raise ConfigError(f"{address}: the host {host!r} {why}. {usage}")
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"{address}: port {int(port)} is out of range (1..65535). {usage}")
    return name, int(port)


def check_ray_address(address: str, *, timeout: float = _PROBE_TIMEOUT_S) -> None:
    """Refuse an address nobody answers at (ConfigError naming it), in at most ``timeout`` seconds, and a
    missing Ray (without importing it)."""
    import importlib.util

    hp = _host_port(address)
    if importlib.util.find_spec("ray") is None:
        _ray()  # raises the ConfigError that says how to install it
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(
            f"{address}: no Ray cluster answers at this address ({reason}). Start one there (ray start --head), "
            "fix the address, or use --ray local"
        ) from None


class ray_session:  # noqa: N801 - a context manager
    """Connected to Ray inside the block: started locally, joined, or the connection already open."""

    def __init__(self, address: str, *, workers: int | None = None) -> None:
        self.address, self.workers, self.started = address, workers, False

    def __enter__(self):
        ray = _ray()
        if ray.is_initialized():
            return ray
        if self.address == "local":
            # Ray runs its workers at nice 15; a local ingest's workers should compete for the CPU as a
            # serial ingest does (read by the raylet this starts, so set only around the start)
            old = os.environ.get("RAY_worker_niceness")
            os.environ["RAY_worker_niceness"] = "0"
            try:
                ray.init(
                    num_cpus=self.workers or os.cpu_count() or 1,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            finally:
                if old is None:
                    os.environ.pop("RAY_worker_niceness", None)
                else:
                    os.environ["RAY_worker_niceness"] = old
        else:
            check_ray_address(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                raise ConfigError(
                    f"{self.address}: could not join the Ray cluster there ({' '.join(str(exc).split())[:300]}). "
                    "Check the address and that the cluster runs the same Ray version"
                ) from None
        self.started = True
        return ray

    def __exit__(self, *exc) -> None:
        if self.started:
            _ray().shutdown()


def _move_to_gpu(obj) -> None:
    """Put an encoder's / SAM predictor's torch model on this worker's GPU (best effort: om3db's own types)."""
    import torch

    model = getattr(obj, "model", None)
    if model is None or not hasattr(model, "to"):
        return
    model.to("cuda")
    if hasattr(obj, "device") and not callable(getattr(type(obj), "device", None)):
        try:
            obj.device = torch.device("cuda")
        except AttributeError:  # a read-only property: it follows the model
            pass


class _ScanWorker:
    """One Ray actor: holds the plan (with its models) and ingests one folder per call."""

    def __init__(self, plan, stored) -> None:
        import ray

        self.plan, self.stored = plan, stored
        if ray.get_gpu_ids():
            for enc in plan.encoders.values():
                _move_to_gpu(enc)
            if plan.sam is not None:
                _move_to_gpu(plan.sam)

    def run(self, folder: str):
        """(outcome, result or None, settings or None) of one folder, exactly as ``run_plan`` makes them."""
        from .ingest import run_plan

        got = []
        plan = dataclasses.replace(self.plan, folders=(Path(folder),))
        try:
            out = run_plan(plan, stored=self.stored, write=lambda result, settings: got.append((result, settings)))
        except Exception as exc:  # noqa: BLE001 - sent back as text: om3db's errors do not all pickle
            return _TaskFailed(_error_text(exc))
        result, settings = got[0] if got else (None, None)
        return out[0], result, settings


@dataclasses.dataclass(frozen=True)
class _TaskFailed:
    """What a worker returns when its scan raised (retried, then reported by the driver)."""

    error: str


def _failed(folder: Path, error: str, seconds: float):
    from .results import IngestOutcome

    name = folder.stem if folder.is_file() else folder.name
    return IngestOutcome(name, str(folder), "failed", 0, seconds, None, error)


def _error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # RayTaskError: the exception the task raised
    err = cause if isinstance(cause, BaseException) else exc
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}".strip()


def default_workers(ray) -> int:
    """One worker per GPU of the cluster, else one per CPU (the writer is this process)."""
    res = ray.cluster_resources()
    return max(1, int(res.get("GPU", 0)) or int(res.get("CPU", 1)))


def run_plan_ray(
    plan,
    *,
    stored: Mapping[str, object],
    write: Callable,
    address: str = "local",
    workers: int | None = None,
    retries: int = DEFAULT_RETRIES,
    progress: Callable[[str, str, int, int], None] | None = None,
) -> list:
    """``run_plan`` with the per-scan work on Ray actors (module docstring). ``workers``: how many actors
    (default: one per GPU of the cluster, else one per CPU); each gets one GPU when the cluster has them."""
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    with ray_session(address, workers=workers) as ray:
        n = workers or default_workers(ray)
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        actor = ray.remote(num_cpus=1, num_gpus=gpus)(_ScanWorker)  # a dead one is replaced by _drive
        plan_ref, stored_ref = ray.put(plan), ray.put(dict(stored))
        actors = [actor.remote(plan_ref, stored_ref) for _ in range(min(n, len(plan.folders)))]
        return _drive(ray, actor, actors, plan, plan_ref, stored_ref, write, retries, progress)


def _drive(ray, actor, actors, plan, plan_ref, stored_ref, write, retries, progress) -> list:
    """Hand folders to idle actors, stream results back, commit them in plan order."""
    folders = list(plan.folders)
    total = len(folders)
    queue = list(range(total))
    attempts = [0] * total
    started = [0.0] * total
    done: dict[int, tuple] = {}
    pending: dict = {}  # ObjectRef -> (folder index, actor slot)
    idle = list(range(len(actors)))
    window = 2 * len(actors)  # results held back for plan order stay bounded
    out: list = []
    while len(out) < total:
        while idle and queue and queue[0] < len(out) + window:
            i, slot = queue.pop(0), idle.pop(0)
            attempts[i] += 1
            started[i] = started[i] or time.perf_counter()
            pending[actors[slot].run.remote(str(folders[i]))] = (i, slot)
        if pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            i, slot = pending.pop(ref)
            idle.append(slot)
            try:
                got = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task or its worker died: retried, then reported
                if isinstance(exc, ray.exceptions.RayActorError):  # a fresh worker takes the dead one's slot
                    actors[slot] = actor.remote(plan_ref, stored_ref)
                got = _TaskFailed(_error_text(exc))
            if not isinstance(got, _TaskFailed):
                done[i] = got
            elif attempts[i] <= retries:
                queue.insert(0, i)
            else:
                done[i] = (_failed(folders[i], got.error, time.perf_counter() - started[i]), None, None)
        while len(out) in done:  # commit in plan order, as a serial ingest does
            outcome, result, settings = done.pop(len(out))
            if result is not None:
                write(result, settings)
            out.append(outcome)
            if progress is not None:
                progress(outcome.scan, "scans", len(out), total)
    return out
