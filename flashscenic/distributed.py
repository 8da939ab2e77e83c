"""Running the pipeline's tasks on a Dask cluster.

``start_executor`` connects to a cluster (or starts one on this machine) and returns an
executor of the protocol ``flashscenic.executors.Executor``: ``share`` a value every task
needs, ``map`` a task function over arguments (results in order), ``stage`` (a
``distributed.span``, so the dashboard shows grn / pruning / aucell by name), ``close``.
The engine (``pipeline.run_pipeline``) is the same for every executor; only where its
tasks run changes.

=======================  ===============================================================
no address given         an embedded cluster on 127.0.0.1, sized by the run's device
                         (``plan_cluster``): with GPUs and device auto/cuda, one worker
                         per GPU, each computing on its own GPU as ``cuda:0``, resource
                         ``GPU=1`` (``dask_cuda.LocalCUDACluster`` when dask-cuda imports,
                         else a ``LocalCluster`` with ``CUDA_VISIBLE_DEVICES`` set per
                         worker); else ``distributed.LocalCluster`` with CPU process
                         workers that never initialise CUDA, one thread each
``scheduler=ADDRESS``    an existing cluster (``dask scheduler`` + ``dask worker``/``dask
``scheduler_file=FILE``  cuda worker``, SLURM, Kubernetes: see ``cluster/README.md``)
``client=CLIENT``        a ``distributed.Client`` the caller made (left open at the end)
``use_running=True``     the client this process already has (``distributed.get_client``)
``n_workers=0``          no Dask at all: ``InProcessExecutor``
=======================  ===============================================================

What the executor guarantees:

* Tasks are submitted under deterministic keys (the function and its arguments hashed,
  as ``pure=True`` does), so a task is the same task whoever submits it; they are retried
  on another worker when theirs dies (Dask's ``allowed-failures``) and, for other
  unexpected exceptions, ``retries`` times. A user error (``InputError``) is not retried:
  it is raised in the caller as the original exception.
* Shared values are scattered once to every worker; task results and shared values go
  between the client and the workers directly, never through the scheduler.
* Each worker sets its torch threads so that the tasks of all workers of a host use its
  cores once (no oversubscription), and loads the task libraries as it joins (an embedded
  cluster's workers while the run ingests), not in its first task.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import re
import traceback
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
from distributed import LocalCluster, SpecCluster, WorkerPlugin

from .errors import InputError, MissingFileError

from ._device import WORKER_DEVICE, parse_device
from .params import DEFAULT_DASHBOARD

__all__ = ["start_executor", "DaskExecutor", "ClusterPlan", "plan_cluster", "visible_gpus", "chunk_cells_for",
           "plan_chunk_cells", "torch_threads_for"]

logger = logging.getLogger(__name__)

_LOCALHOST = "127.0.0.1"
_BYTES_PER_VALUE = 16  # per cell and gene in one AUC task: the rows read (CSR or dense), a dense copy, slack


# ----------------------------------------------------------------------------- starting


@dataclasses.dataclass(frozen=True)
class ClusterPlan:
    """What an embedded cluster starts, decided once from the run's device and this machine.

    ``kind``: ``'dask-cuda'`` (``LocalCUDACluster``), ``'gpu-processes'`` (a ``LocalCluster``
    with one process per GPU) or ``'cpu'``. ``gpus``: the ``CUDA_VISIBLE_DEVICES`` entry of
    each GPU worker (none for CPU workers). ``n_workers``: None for the CPU default.
    """

    kind: str
    n_workers: int | None
    gpus: tuple[str, ...] = ()

    @property
    def gpu(self) -> bool:
        return self.kind != "cpu"

    def worker_environment(self, gpu: str | None = None) -> dict[str, str]:
        """What a worker's environment gets on top of Dask's: its device for ``resolve_device``,
        and the GPUs it may see (none for a CPU worker, so it never initialises CUDA)."""
        if not self.gpu:
            return {"CUDA_VISIBLE_DEVICES": "", WORKER_DEVICE: "cpu"}
        return {WORKER_DEVICE: "cuda:0", **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to workers: ``CUDA_VISIBLE_DEVICES``'s entries when it
    is set, else ``0 .. device_count - 1``; none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip():
        return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]
    return [str(i) for i in range(count)]


def plan_cluster(device: str = "auto", n_workers: int | None = None) -> ClusterPlan:
    """The embedded cluster for a run on ``device`` (the cluster model of DESIGN.md).

    GPUs and device ``'auto'``/``'cuda'``: one worker per GPU (``n_workers`` of them, at most
    the GPU count: two processes never share a GPU); ``'cuda:N'``: one worker on GPU N.
    dask-cuda is imported only here, only when GPUs are there; an installed dask-cuda that
    fails to import gives one warning and the one-process-per-GPU ``LocalCluster``.
    ``'cpu'``, or no GPU: CPU workers (``n_workers``, default ``default_cpu_workers``).
    """
    if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1):
        raise InputError(f"n_workers of an embedded cluster must be a positive integer, got {n_workers!r}")
    kind, index = parse_device(device)
    gpus = visible_gpus() if kind != "cpu" else []
    if not gpus:
        return ClusterPlan("cpu", n_workers)
    if index is not None:
        if index >= len(gpus):
            raise InputError(f"device='cuda:{index}' but this machine has {len(gpus)} visible GPU(s) "
                             f"(cuda:0..cuda:{len(gpus) - 1})")
        gpus = [gpus[index]]
    if n_workers is not None and n_workers > len(gpus):
        raise InputError(f"n_workers={n_workers} but {len(gpus)} GPU(s) are there for device={device!r}: an embedded "
                         f"cluster runs one worker per GPU (n_workers <= {len(gpus)}), or pass device='cpu' "
                         "(--device cpu) for CPU workers")
    gpus = gpus[: n_workers or len(gpus)]
    return ClusterPlan("dask-cuda" if _dask_cuda_imports() else "gpu-processes", len(gpus), tuple(gpus))


_dask_cuda_warned = False


def _dask_cuda_imports() -> bool:
    """Whether dask-cuda is installed and imports (tried only when GPUs are there). A broken
    install (dask-cuda pins dask, distributed and RAPIDS versions) warns once, not fails the run."""
    global _dask_cuda_warned
    try:
        import dask_cuda  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name == "dask_cuda":
            return False  # not installed: the one-process-per-GPU LocalCluster, silently
        failure = error
    except Exception as error:  # noqa: BLE001  (any import failure of a third-party package)
        failure = error
    else:
        return True
    if not _dask_cuda_warned:
        logger.warning("dask-cuda is installed but does not import (%s: %s); starting one worker process per GPU "
                       "without it", type(failure).__name__, failure)
        _dask_cuda_warned = True
    return False


def start_executor(
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    scheduler_file: str | os.PathLike | None = None,
    dashboard_address: str | None = DEFAULT_DASHBOARD,
    memory_limit: str | int | float | None = "auto",
    security=None,
    *,
    device: str = "auto",
    client=None,
    use_running: bool = False,
    retries: int = 2,
    wait_for_workers: float = 60.0,
    local_directory: str | os.PathLike | None = None,
    verbose: bool = True,
):
    """The executor of a run: an embedded Dask cluster, an existing one, or none.

    Parameters
    ----------
    n_workers
        Embedded cluster: worker processes (GPU workers: one per GPU, and no more than
        there are GPUs; CPU workers: one per ``threads_per_worker`` cores, at most one per
        2 GiB of memory). ``0``: no Dask, tasks run in this process (``InProcessExecutor``).
        With ``scheduler``/``scheduler_file``: wait for at least this many workers.
    threads_per_worker
        Threads (concurrent tasks) per worker of the embedded cluster.
    scheduler
        Address of a running scheduler (``tcp://host:8786``, ``tls://...``).
    scheduler_file
        The scheduler file a running scheduler wrote (``dask scheduler --scheduler-file``).
    dashboard_address
        Embedded cluster: where the dashboard listens (``':8787'``: that port on 127.0.0.1;
        a taken port is replaced by a free one); ``None``: no dashboard.
    memory_limit
        Embedded cluster: memory limit per worker (``'auto'``: the machine's memory split
        between the workers; bytes or ``'4GiB'``). AUC chunk sizes are derived from it.
    security
        A ``distributed.Security`` (TLS); default: Dask's configuration
        (``distributed.comm.tls.*``, see ``cluster/tls``).
    device
        The run's device, which sizes the embedded cluster (``plan_cluster``): ``'auto'`` or
        ``'cuda'`` with GPUs there, one GPU worker per GPU; ``'cuda:N'``, one on GPU N;
        ``'cpu'`` (or no GPU), CPU workers that never initialise CUDA.
    retries
        Retries of a task that raised an unexpected exception (worker loss is retried by
        Dask itself; user errors are never retried).
    wait_for_workers
        Seconds to wait for the workers of an existing cluster to connect.
    client
        A ``distributed.Client`` to run on (left open when the executor closes).
    use_running
        Run on this process's current client (``distributed.get_client()``); an error when
        there is none.
    local_directory
        Embedded cluster: the workers' scratch folder (default: Dask's, under the temp dir).
    verbose
        Progress bars (the cluster and its dashboard link are logged at INFO).

    Returns
    -------
    DaskExecutor or executors.InProcessExecutor
        An embedded cluster is returned at once and starts in the background (the run
        ingests and trains meanwhile); a start that fails is logged when it fails and
        raised at the executor's next use (``check_start``, each stage of a run).
    """
    from .executors import InProcessExecutor

    external = scheduler is not None or scheduler_file is not None
    given = [n for n, v in [("scheduler", scheduler), ("scheduler_file", scheduler_file), ("client", client),
                            ("use_running", use_running or None)] if v is not None]
    if len(given) > 1:
        raise InputError(f"give one of scheduler, scheduler_file, client, use_running; got {', '.join(given)}")
    if client is not None or use_running:
        if n_workers == 0:
            raise InputError("n_workers=0 runs in this process; it cannot be combined with a Dask client")
        if use_running:
            from distributed import get_client

            try:
                client = get_client()
            except ValueError:
                raise InputError("use_running=True but this process has no Dask client; create one "
                                 "(distributed.Client(...)) or pass scheduler=") from None
        return DaskExecutor(client, None, owns_client=False, retries=retries, verbose=verbose)
    if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 0):
        raise InputError(f"n_workers must be a non-negative integer, got {n_workers!r}")
    if isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise InputError(f"threads_per_worker must be a positive integer, got {threads_per_worker!r}")
    if n_workers == 0:
        if external:
            raise InputError("n_workers=0 runs in this process; it cannot be combined with a scheduler")
        return InProcessExecutor()
    _check_memory_limit(memory_limit)  # here: the embedded cluster starts in the background
    plan = plan_cluster(device, n_workers) if not external else None

    from distributed import Client

    if external:
        client = _connect(Client, scheduler, scheduler_file, security)
        try:
            _wait_for_workers(client, n_workers or 1, wait_for_workers)
        except BaseException:
            client.close()
            raise
        try:
            executor = DaskExecutor(client, None, retries=retries, verbose=verbose)
        except BaseException:
            client.close()
            raise
        _log_started(client, None, dashboard=True)
        return executor

    def start():  # in a thread: the workers spawn while this process reads the input and trains the GRN
        try:
            cluster = _embedded_cluster(plan, threads_per_worker, dashboard_address, memory_limit, security,
                                        local_directory)
        except BaseException as error:
            logger.error("the embedded Dask cluster did not start: %s", error)  # now, not at its first use
            raise
        client = None
        try:
            client = Client(cluster, security=security) if security is not None else Client(cluster)
            _log_started(client, cluster, dashboard=dashboard_address is not None)
            _set_up_workers(client)  # here, so the workers load their libraries while the run ingests
        except BaseException as error:
            logger.error("the embedded Dask cluster did not start: %s", error)
            if client is not None:
                client.close()
            cluster.close()
            raise
        return client, cluster

    # The nannies put these into this process's environment when they spawn their workers;
    # set them here first, from this thread, so the start thread never adds variables to the
    # environment while this one works.
    os.environ.update({str(k): str(v) for k, v in worker_environment().items()})
    starting = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flashscenic-dask-start")
    executor = DaskExecutor(starting.submit(start), retries=retries, verbose=verbose, local_cpus=not plan.gpu)
    starting.shutdown(wait=False)
    return executor


def _close_started(starting: concurrent.futures.Future) -> None:
    """Close the client and cluster a background start made (nothing if it failed)."""
    if starting.cancelled() or starting.exception() is not None:
        return
    client, cluster = starting.result()
    client.close()
    cluster.close()


def _check_memory_limit(memory_limit) -> None:
    from distributed.worker_memory import parse_memory_limit

    try:
        if isinstance(memory_limit, bool) or isinstance(memory_limit, (int, float)) and memory_limit < 0:
            raise TypeError
        parse_memory_limit(memory_limit, 1, 1, logger=logger)
    except (ValueError, TypeError):
        raise InputError(f"memory_limit must be 'auto', None, a number of bytes or a size such as '4GiB', "
                         f"got {memory_limit!r}") from None


def _log_started(client, cluster, *, dashboard: bool) -> None:
    try:
        logger.info("Dask: %s", _describe(client, cluster))
    except Exception as error:  # a description is not worth failing the start for
        logger.info("Dask: started (%s)", error)
    link = _dashboard_link(client)
    if dashboard and link:
        logger.info("Dask dashboard: %s", link)


def _describe(client, cluster) -> str:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    threads = sum(int(w.get("nthreads", 1)) for w in workers.values())
    kind = type(cluster).__name__ if cluster is not None else "scheduler"
    gpu = ", GPU workers" if any((w.get("resources") or {}).get("GPU") for w in workers.values()) else ""
    return f"{kind} at {client.scheduler.address}: {len(workers)} workers, {threads} threads{gpu}"


def _dashboard_link(client) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # no dashboard
        return None


def default_cpu_workers(threads_per_worker: int = 1, min_memory: int = 2 * 2**30) -> int:
    """Workers of an embedded CPU cluster: one per ``threads_per_worker`` usable cores, but at
    least ``min_memory`` bytes of the machine's memory each (every worker holds torch)."""
    import psutil

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cpu_quota()
    cores = min(cores, quota) if quota else cores
    by_memory = int(psutil.virtual_memory().total // min_memory)
    return max(1, min(cores // max(1, threads_per_worker), by_memory))


def _embedded_cluster(plan: ClusterPlan, threads_per_worker, dashboard_address, memory_limit, security,
                      local_directory):
    dashboard = _local_dashboard(dashboard_address)
    options: dict[str, Any] = dict(n_workers=plan.n_workers, threads_per_worker=threads_per_worker, host=_LOCALHOST,
                                   dashboard_address=dashboard, memory_limit=memory_limit, silence_logs=logging.ERROR)
    if security is not None:
        options["security"] = security
    if local_directory is not None:
        options["local_directory"] = str(local_directory)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()}):
        if plan.kind == "dask-cuda":
            from dask_cuda import LocalCUDACluster  # only here: GPUs are there and dask-cuda imports

            with dask.config.set({"distributed.nanny.environ": {**dask.config.get("distributed.nanny.environ", {}),
                                                                **plan.worker_environment()}}):
                return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(plan.gpus), resources={"GPU": 1}, **options)
        if plan.kind == "gpu-processes":
            return _GPUProcessCluster(plan, **options)
        if options["n_workers"] is None:
            options["n_workers"] = default_cpu_workers(threads_per_worker)
        return LocalCluster(processes=True, env=plan.worker_environment(), **options)


class _OneGPUEach(SpecCluster):
    """Between LocalCluster and SpecCluster in ``_GPUProcessCluster``'s MRO: gives the i-th
    worker of LocalCluster's spec the i-th GPU of the plan."""

    gpu_plan: ClusterPlan

    def __init__(self, *args, workers=None, **kwargs):
        workers = {name: {**spec, "options": {**spec["options"], "resources": {"GPU": 1},
                                              "env": self.gpu_plan.worker_environment(gpu)}}
                   for (name, spec), gpu in zip(dict(workers or {}).items(), self.gpu_plan.gpus)}
        super().__init__(*args, workers=workers, **kwargs)


class _GPUProcessCluster(LocalCluster, _OneGPUEach):
    """A ``LocalCluster`` with one worker process per GPU, each seeing only its own GPU
    (``CUDA_VISIBLE_DEVICES``) as ``cuda:0``, with resource ``GPU=1``: dask-cuda's layout
    without dask-cuda."""

    def __init__(self, plan: ClusterPlan, **options):
        self.gpu_plan = plan
        super().__init__(processes=True, **options)


def worker_environment() -> dict:
    """Dask's worker environment plus a 32 MiB ``MALLOC_MMAP_THRESHOLD_``.

    Dask sets ``MALLOC_TRIM_THRESHOLD_`` (64 KiB) so workers hand freed memory back at once;
    setting any malloc threshold turns off glibc's adaptive mmap threshold, so torch's
    large, short-lived buffers were mmap'ed and unmapped at every step: RegDiffusion ran
    1.7x slower in a worker than in the main process (13.1 s against 7.7 s for 40 steps,
    mostly system time). With the mmap threshold at 32 MiB it took 8.2 s.
    (The ``cluster/`` recipes export it for users' own workers.)
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ.setdefault("MALLOC_MMAP_THRESHOLD_", 32 * 2**20)
    return environ


def _local_dashboard(address: str | None) -> str | None:
    """A dashboard address on 127.0.0.1 unless it names a host (``':8787'``, ``'8787'`` -> 127.0.0.1:8787)."""
    if address is None or address == "":
        return None
    text = str(address)
    if re.fullmatch(r"\d+", text):
        return f"{_LOCALHOST}:{text}"
    if text.startswith(":"):
        return f"{_LOCALHOST}{text}"
    return text


def _connect(Client, scheduler, scheduler_file, security):
    where = scheduler if scheduler is not None else f"the scheduler of {scheduler_file}"
    options: dict[str, Any] = {"timeout": 30}
    if security is not None:
        options["security"] = security
    if scheduler_file is not None:
        if not Path(scheduler_file).is_file():
            raise MissingFileError(f"scheduler file {str(scheduler_file)!r} does not exist; start a scheduler with "
                                   "`dask scheduler --scheduler-file FILE` (see cluster/README.md)")
        options["scheduler_file"] = str(scheduler_file)
    else:
        options["address"] = scheduler
    try:
        return Client(**options)
    except OSError as error:
        raise InputError(f"cannot connect to {where}: {error}. Is the scheduler running and reachable from here "
                         "(address, port, firewall, TLS settings)?") from None


def _wait_for_workers(client, n: int, timeout: float) -> None:
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        found = len(client.scheduler_info(n_workers=-1)["workers"])
        raise InputError(f"{found} Dask worker(s) connected to {client.scheduler.address} after {timeout:g} s, "
                         f"{n} needed; start workers (e.g. `dask worker --scheduler-file FILE`, see "
                         "cluster/README.md)") from None


# ----------------------------------------------------------------------------- chunk sizes


def chunk_cells_for(memory_limit_bytes: int | float | None, n_genes: int, *, threads: int = 1,
                    fraction: float = 0.25, minimum: int = 256, maximum: int = 200_000) -> int:
    """Cells per AUC chunk that a worker with ``memory_limit_bytes`` can score ``threads`` at a time.

    A chunk task holds its rows (at worst ``n_genes`` values a cell, read and converted:
    ``16 * n_genes`` bytes a cell) and its AUC rows; ``threads`` chunks in flight may use
    ``fraction`` of the worker's memory, the rest is left to the libraries and Dask. The
    result is clipped to ``[minimum, maximum]``; no limit (``None`` or 0) gives ``maximum``.
    """
    if isinstance(n_genes, bool) or not isinstance(n_genes, int) or n_genes < 1:
        raise InputError(f"n_genes must be a positive integer, got {n_genes!r}")
    if not memory_limit_bytes:
        return maximum
    per_cell = _BYTES_PER_VALUE * n_genes
    cells = int(float(memory_limit_bytes) * fraction / max(1, threads) // per_cell)
    return max(minimum, min(maximum, cells))


def plan_chunk_cells(n_cells: int, n_genes: int, *, store_chunk_rows: int, memory_limit: int | None,
                     slots: int, threads_per_worker: int = 1, tasks_per_slot: int = 4, minimum: int = 1024) -> int:
    """Cells per AUC chunk of a run: fits a worker's memory, balances the workers, follows the store.

    At most what ``chunk_cells_for`` allows a worker; small enough that every task slot
    (worker thread) gets about ``tasks_per_slot`` chunks (but not under ``minimum`` cells);
    then aligned with the expression store's chunks (a multiple of them, or an even split
    of one) so that each task decompresses as little as possible beyond its own rows.
    """
    limit = chunk_cells_for(memory_limit, n_genes, threads=threads_per_worker)
    balanced = max(minimum, -(-n_cells // max(1, slots * tasks_per_slot)))
    target = max(1, min(limit, balanced, n_cells))
    store = max(1, int(store_chunk_rows))
    if target >= store:
        return store * (target // store)
    return -(-store // -(-store // target))  # ceil(store / ceil(store / target))


# ----------------------------------------------------------------------------- executor


class _Failure:
    """A task's user error, returned instead of raised so that Dask does not retry it."""

    def __init__(self, error: BaseException, text: str):
        self.error, self.text = error, text


def _call(function: Callable, args: tuple):
    """Run one task on a worker; user errors come back as a ``_Failure`` value."""
    try:
        return function(*args)
    except InputError as error:
        return _Failure(error, traceback.format_exc())


def _cpu_quota() -> int | None:
    """CPUs allowed by the cgroup's CPU quota (containers, Kubernetes limits), or None."""
    for path, parse in (("/sys/fs/cgroup/cpu.max", lambda t: t.split()),
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", lambda t: [t.strip(), Path(
                            "/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()])):
        try:
            quota, period = parse(Path(path).read_text())
            if quota not in ("max", "-1") and int(period) > 0:
                return max(1, math.ceil(int(quota) / int(period)))
        except (OSError, ValueError):
            continue
    return None


def torch_threads_for(worker_threads: int, host_threads: int) -> int:
    """Torch threads of a worker with ``worker_threads`` Dask threads, ``host_threads`` on its host.

    A worker pinned to its own cores (SLURM, dask-cuda's CPU affinity) or limited by a
    container quota splits those between its own threads; a worker that sees the whole
    machine shares it with every Dask thread on the host. So tasks never use more
    threads, all together, than there are cores.
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    quota = _cpu_quota()
    if quota is not None and quota < allowed:
        return max(1, quota // max(1, worker_threads))
    if allowed < (os.cpu_count() or allowed):
        return max(1, allowed // max(1, worker_threads))
    return max(1, allowed // max(1, host_threads))


class _WorkerSetup(WorkerPlugin):
    """Worker plugin, for each worker (new ones included): sets torch's threads
    (``torch_threads_for``), then loads what the pipeline's tasks run on the worker's device
    (``_warm``), so a worker's first pruning or AUCell task does not pay a second or two of
    imports, numba's kernels or CUDA's context."""

    name = "flashscenic-worker-setup"
    idempotent = False

    def __init__(self, threads_by_host: dict[str, int]):
        self.threads_by_host = dict(threads_by_host)

    def setup(self, worker) -> None:
        import torch
        from distributed.comm import get_address_host

        host = get_address_host(worker.address)
        threads = worker.state.nthreads
        torch.set_num_threads(torch_threads_for(threads, max(threads, self.threads_by_host.get(host, threads))))
        _warm()


def _warm() -> None:
    """Import the task modules and run AUCell once on a 2 x 4 matrix on the worker's device
    (``resolve_device('auto')``: on a CPU worker numba loads its kernels from its cache, on a
    GPU worker CUDA makes its context and loads torch's kernels). A failure here is only
    logged: the task that needs the module reports it."""
    try:
        import numpy as np

        from . import stages  # noqa: F401  (the task functions; they import cistarget)
        from ._device import resolve_device
        from .aucell import get_aucell
        from .cistarget import CisTargetPruner  # noqa: F401

        get_aucell(np.arange(8, dtype=np.float32).reshape(2, 4), np.ones((1, 4)), k=None, auc_threshold=0.5,
                   device=resolve_device("auto"), seed=0, verbose=False)
    except Exception as error:  # noqa: BLE001
        logger.warning("warming this worker failed (its first task will say why): %s", error)


def _set_up_workers(client) -> None:
    """Register ``_WorkerSetup`` on every worker of ``client``'s cluster (and on later ones)."""
    from distributed.comm import get_address_host

    by_host: dict[str, int] = {}
    for address, info in client.scheduler_info(n_workers=-1)["workers"].items():
        host = get_address_host(address)
        by_host[host] = by_host.get(host, 0) + int(info.get("nthreads", 1))
    client.register_plugin(_WorkerSetup(by_host), name=_WorkerSetup.name)


def _worker_threads() -> int:
    import torch

    return torch.get_num_threads()


class DaskExecutor:
    """Runs the pipeline's tasks on a Dask cluster (see the module docstring).

    Parameters
    ----------
    client
        A connected ``distributed.Client``, or a ``concurrent.futures.Future`` of
        ``(client, cluster)`` for a cluster still starting (``start_executor``'s embedded
        cluster, its workers set up by ``_set_up_workers``): everything that needs the
        cluster waits for it.
    cluster
        The cluster object when this executor started it (closed with the executor).
    owns_client
        Close the client with the executor (False for a client the caller gave).
    retries
        Retries of a task that raised an unexpected exception.
    direct
        Move task results and shared values between this process and the workers
        directly (True), or through the scheduler (False: when the workers cannot be
        reached from here).
    verbose
        Progress bars.
    local_cpus
        The workers are CPU processes of this machine that this executor started (the
        embedded ``LocalCluster``): they share this process's cores and memory, so a lone
        task that would use every core anyway may as well run here (see ``run_pipeline``).
    """

    remote = True

    def __init__(self, client, cluster=None, *, owns_client: bool = True, retries: int = 2, direct: bool = True,
                 verbose: bool = True, local_cpus: bool = False):
        self._starting = client if isinstance(client, concurrent.futures.Future) else None
        self._client, self._cluster = (None, None) if self._starting is not None else (client, cluster)
        self.owns_client, self.local_cpus = owns_client, bool(local_cpus)
        self.retries, self.direct, self.verbose = int(retries), bool(direct), verbose
        self._shared: dict[str, list] = {}  # key of a scattered future -> [its value, live futures]
        if self._starting is None:
            _set_up_workers(client)

    # --- the cluster ------------------------------------------------------------------

    def _started(self) -> None:
        """Wait for a starting cluster; a failed start raises its error at every use."""
        if self._starting is None:
            return
        self._client, self._cluster = self._starting.result()  # an interrupt here leaves the start to close()
        self._starting = None

    def check_start(self) -> None:
        """Raise now if the cluster's start has already failed (the run stops at the next
        stage, not at the first task, which may be hours of GRN later)."""
        if self._starting is not None and self._starting.done() and self._starting.exception() is not None:
            self._started()

    @property
    def client(self):
        """The ``distributed.Client`` (waits for a starting cluster)."""
        self._started()
        return self._client

    @property
    def cluster(self):
        """The cluster this executor started, or None (waits for a starting cluster)."""
        self._started()
        return self._cluster

    def _workers(self) -> dict:
        return self.client.scheduler_info(n_workers=-1)["workers"]

    @property
    def n_workers(self) -> int:
        return len(self._workers())

    @property
    def slots(self) -> int:
        """Tasks that can run at once: the workers' threads."""
        return max(1, sum(int(w.get("nthreads", 1)) for w in self._workers().values()))

    @property
    def worker_memory_limit(self) -> int | None:
        """The smallest memory limit of a worker, bytes (None: no worker has one)."""
        limits = [int(w["memory_limit"]) for w in self._workers().values() if w.get("memory_limit")]
        return min(limits) if limits else None

    @property
    def has_gpu(self) -> bool:
        """Whether some worker offers the ``GPU`` resource (dask-cuda workers started with it)."""
        return any((w.get("resources") or {}).get("GPU") for w in self._workers().values())

    @property
    def dashboard_link(self) -> str | None:
        return _dashboard_link(self.client)

    @property
    def name(self) -> str:
        return _describe(self.client, self.cluster)

    def plan_chunk_cells(self, n_cells: int, n_genes: int, store_chunk_rows: int) -> int:
        """Cells per AUC chunk for this cluster's workers (see ``plan_chunk_cells``)."""
        workers = self._workers().values()
        return plan_chunk_cells(n_cells, n_genes, store_chunk_rows=store_chunk_rows,
                                memory_limit=self.worker_memory_limit, slots=self.slots,
                                threads_per_worker=max([int(w.get("nthreads", 1)) for w in workers] or [1]))

    def torch_threads(self) -> dict[str, int]:
        """Each worker's torch thread count (address -> threads)."""
        return self.client.run(_worker_threads)

    # --- the executor interface -------------------------------------------------------

    def share(self, value, *, _hash: bool = True):
        """Scatter ``value`` once to every worker; pass the result to ``map`` as an argument.

        Should every worker holding it die, ``map`` scatters it again from here.
        """
        future = self.client.scatter(value, broadcast=True, hash=_hash, direct=self.direct)
        entry = self._shared.setdefault(future.key, [value, 0])
        entry[1] += 1
        weakref.finalize(future, self._unshare, future.key)
        return future

    def _unshare(self, key: str) -> None:
        entry = self._shared.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._shared[key]

    def map(self, function: Callable, arguments: Sequence[tuple], *, description: str, gpu: bool = False,
            verbose: bool = True) -> list:
        """``[function(*args) for args in arguments]`` on the cluster; results in order.

        ``gpu=True`` asks for a worker with the ``GPU`` resource when the cluster has any.
        The first failure cancels the rest and is raised here (a user error as itself).
        """
        from distributed import Future
        from distributed.client import FutureCancelledError
        from tqdm.auto import tqdm

        arguments = [tuple(a) for a in arguments]
        if not arguments:
            return []
        done: dict[int, Any] = {}
        bar = tqdm(total=len(arguments), desc=description, unit="task",
                   disable=None if verbose and self.verbose and len(arguments) > 1 else True)
        try:
            for attempt in range(3):
                try:
                    self._run(function, arguments, done, description, gpu, bar)
                    break
                except FutureCancelledError:
                    # A shared value lost with every worker that held it: scatter it again.
                    lost = {a.key: a for args in arguments for a in args
                            if isinstance(a, Future) and a.status != "finished" and a.key in self._shared}
                    if not lost or attempt == 2:
                        raise
                    logger.warning("Dask: workers holding shared data died; scattering it again")
                    again = {key: self.share(self._shared[key][0], _hash=False) for key in lost}
                    arguments = [tuple(again[a.key] if isinstance(a, Future) and a.key in again else a for a in args)
                                 for args in arguments]
        finally:
            bar.close()
        return [done[i] for i in range(len(arguments))]

    def _run(self, function, arguments, done: dict, description: str, gpu: bool, bar) -> None:
        """Submit the tasks not in ``done`` and put their results there as they finish."""
        from dask.base import tokenize
        from distributed import as_completed

        resources = {"GPU": 1} if gpu and self.has_gpu else None
        prefix = re.sub(r"[^a-z0-9]+", "-", description.lower()).strip("-") or "task"
        futures: dict[str, tuple[list[int], Any]] = {}  # key -> (the argument positions, its future)
        for i, args in enumerate(arguments):
            if i not in done:
                key = f"{prefix}-{tokenize(function, args)}"
                if key not in futures:  # the same arguments twice: one task (it is pure)
                    futures[key] = ([], self.client.submit(_call, function, args, key=key, retries=self.retries,
                                                           resources=resources))
                futures[key][0].append(i)
        try:
            for batch in as_completed([f for _, f in futures.values()]).batches():
                for future in batch:
                    if future.status != "finished":
                        future.result()  # raises the task's exception (or its cancellation)
                for future, value in zip(batch, self.client.gather(batch, direct=self.direct)):
                    if isinstance(value, _Failure):  # a user error: raised here as itself
                        error = value.error
                        if hasattr(error, "add_note"):
                            error.add_note("raised on a Dask worker:\n" + value.text.rstrip())
                        raise error
                    for i in futures[future.key][0]:
                        done[i] = value
                        bar.update()
        except BaseException:
            self.client.cancel([f for _, f in futures.values()])
            raise

    def stage(self, name: str):
        """A ``distributed.span``: the dashboard groups this stage's tasks under ``name``. A
        cluster whose start has failed raises here, at the stage's beginning."""
        from distributed import span

        self.check_start()

        return span(name)

    def close(self) -> None:
        """Disconnect and stop the cluster when this executor started them; a given client stays open."""
        if self._starting is not None:
            starting, self._starting = self._starting, None
            # Whenever the start ends (now, or after an interrupt of this wait), what it started is closed.
            starting.add_done_callback(_close_started)
            concurrent.futures.wait([starting])
            return
        if self._client is None:
            return
        if self.owns_client:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DaskExecutor({self.name})"
