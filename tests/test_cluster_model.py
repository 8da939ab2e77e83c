"""The device and cluster model (DESIGN.md, "Where tasks run"), on a CPU machine with fakes.

A fake GPU machine is ``torch.cuda.is_available``/``device_count`` patched in this process;
the workers spawned by a cluster are real processes that see no CUDA, which is enough to
check what they are given: their ``CUDA_VISIBLE_DEVICES``, their device and their ``GPU``
resource. dask-cuda is faked twice: a package that fails to import (a broken install, as a
dask-cuda 26.x pinned to other dask versions is), and a ``LocalCUDACluster`` stand-in that
records its arguments and starts a real ``LocalCluster``.
"""

from __future__ import annotations

import logging
import sys
import types

import pytest

from flashscenic._device import WORKER_DEVICE, resolve_device
from flashscenic.errors import InputError

distributed = pytest.importorskip("distributed")
import flashscenic.distributed as engine  # noqa: E402
from flashscenic.distributed import ClusterPlan, plan_cluster, start_executor  # noqa: E402

_worker_env = lambda name: __import__("os").environ.get(name)  # noqa: E731  (pickled by value)


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n)``: this process sees n CUDA devices (and no dask-cuda unless a test adds one)."""
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(WORKER_DEVICE, raising=False)
    monkeypatch.setattr(engine, "_dask_cuda_warned", False)
    monkeypatch.delitem(sys.modules, "dask_cuda", raising=False)

    def fake(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return fake


@pytest.fixture
def broken_dask_cuda(tmp_path, monkeypatch):
    """An installed dask-cuda whose import fails, as one pinned to other dask versions does."""
    package = tmp_path / "site" / "dask_cuda"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ImportError('rapids-dask-dependency 26.10 requires dask==2026.4.0, found 2026.11.0')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


@pytest.fixture
def stand_in_dask_cuda(monkeypatch):
    """A ``dask_cuda`` module whose ``LocalCUDACluster`` records its arguments and starts a real
    ``LocalCluster`` with them (what dask-cuda does, less the per-worker GPU pinning)."""
    calls = []

    def LocalCUDACluster(CUDA_VISIBLE_DEVICES=None, **options):  # noqa: N802, N803  (dask-cuda's names)
        import dask

        calls.append({"CUDA_VISIBLE_DEVICES": CUDA_VISIBLE_DEVICES,
                      "environ": dict(dask.config.get("distributed.nanny.environ", {})), **options})
        return distributed.LocalCluster(processes=True, **options)

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=LocalCUDACluster))
    return calls


# --- the plan ----------------------------------------------------------------------------


def test_no_gpu_means_cpu_workers_whatever_the_device(gpus):
    gpus(0)
    for device in ("auto", "cuda", "cuda:1", "cpu"):
        assert plan_cluster(device) == ClusterPlan("cpu", None)
    assert plan_cluster("auto", 3) == ClusterPlan("cpu", 3)
    assert "dask_cuda" not in sys.modules  # never imported without GPUs


def test_one_worker_per_gpu_and_no_more(gpus):
    """Finding 2: one GPU and --n-workers 2 made dask-cuda refuse mid-start; now refused at once."""
    gpus(2)
    assert plan_cluster("auto") == ClusterPlan("gpu-processes", 2, ("0", "1"))
    assert plan_cluster("cuda", 1) == ClusterPlan("gpu-processes", 1, ("0",))
    assert plan_cluster("cuda:1") == ClusterPlan("gpu-processes", 1, ("1",))
    with pytest.raises(InputError, match=r"n_workers=3 but 2 GPU\(s\).*one worker per GPU.*--device cpu") as error:
        plan_cluster("auto", 3)
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match=r"device='cuda:2' but this machine has 2 visible GPU"):
        plan_cluster("cuda:2")
    with pytest.raises(InputError, match="n_workers=2 but 1 GPU"):
        plan_cluster("cuda:0", 2)
    with pytest.raises(InputError, match="positive integer"):
        plan_cluster("auto", 0)
    gpus(1)
    with pytest.raises(InputError, match="n_workers=2 but 1 GPU"):  # before anything starts
        start_executor(n_workers=2, device="auto", dashboard_address=None, verbose=False)


def test_cpu_device_on_a_gpu_machine_plans_cpu_workers_that_see_no_gpu(gpus):
    gpus(4)
    plan = plan_cluster("cpu", 3)
    assert plan == ClusterPlan("cpu", 3)
    assert plan.worker_environment() == {"CUDA_VISIBLE_DEVICES": "", WORKER_DEVICE: "cpu"}


def test_the_gpus_handed_out_follow_cuda_visible_devices(gpus, monkeypatch):
    gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert plan_cluster("auto").gpus == ("3", "5")
    assert plan_cluster("cuda:1").gpus == ("5",)
    assert ClusterPlan("gpu-processes", 1, ("5",)).worker_environment("5") == {
        WORKER_DEVICE: "cuda:0", "CUDA_VISIBLE_DEVICES": "5"}


def test_a_dask_cuda_that_fails_to_import_falls_back_with_one_warning(gpus, broken_dask_cuda, caplog):
    """Finding 2: ``find_spec`` found the broken package, then its import killed the run."""
    gpus(1)
    with caplog.at_level(logging.WARNING, logger="flashscenic.distributed"):
        assert plan_cluster("auto") == ClusterPlan("gpu-processes", 1, ("0",))
        assert plan_cluster("cuda") == ClusterPlan("gpu-processes", 1, ("0",))
    warnings = [r.getMessage() for r in caplog.records if "dask-cuda" in r.getMessage()]
    assert len(warnings) == 1 and "does not import" in warnings[0] and "rapids-dask-dependency" in warnings[0]


def test_an_importable_dask_cuda_is_chosen(gpus, stand_in_dask_cuda):
    gpus(2)
    assert plan_cluster("auto").kind == "dask-cuda"
    assert plan_cluster("cpu").kind == "cpu"


# --- the clusters started ------------------------------------------------------------------


def _workers(executor) -> dict:
    return executor.client.scheduler_info(n_workers=-1)["workers"]


def test_without_dask_cuda_each_gpu_gets_one_worker_process_of_its_own(gpus):
    """Finding 3: the CPU LocalCluster gave every core a worker, all on the one GPU; now one
    process per GPU, each seeing its GPU alone, resource GPU=1, and pruning asks for it."""
    gpus(2)
    executor = start_executor(device="auto", dashboard_address=None, verbose=False)
    try:
        assert type(executor.cluster).__name__ == "_GPUProcessCluster" and not executor.local_cpus
        assert executor.n_workers == 2 and executor.has_gpu
        assert sorted(executor.client.run(_worker_env, "CUDA_VISIBLE_DEVICES").values()) == ["0", "1"]
        assert set(executor.client.run(_worker_env, WORKER_DEVICE).values()) == {"cuda:0"}
        assert [w["resources"] for w in _workers(executor).values()] == [{"GPU": 1}, {"GPU": 1}]
        asked = []
        real_submit = executor.client.submit

        def submit(*args, **options):
            asked.append(options.get("resources"))
            return real_submit(*args, **options)

        executor.client.submit = submit
        assert executor.map(pow, [(2, 3), (3, 2)], description="test", gpu=True, verbose=False) == [8, 9]
        assert asked == [{"GPU": 1}] * 2
    finally:
        executor.close()


def test_cpu_device_on_a_gpu_machine_gets_cpu_workers_that_never_see_cuda(gpus, stand_in_dask_cuda):
    """Finding 2: --device cpu on a GPU machine got one GPU worker; now CPU workers, no dask-cuda."""
    gpus(2)
    executor = start_executor(n_workers=2, device="cpu", dashboard_address=None, verbose=False)
    try:
        assert type(executor.cluster).__name__ == "LocalCluster" and executor.local_cpus
        assert stand_in_dask_cuda == []
        assert set(executor.client.run(_worker_env, "CUDA_VISIBLE_DEVICES").values()) == {""}
        assert set(executor.client.run(_worker_env, WORKER_DEVICE).values()) == {"cpu"}
        assert not executor.has_gpu
        is_initialized = lambda: __import__("torch").cuda.is_initialized()  # noqa: E731
        assert set(executor.client.run(is_initialized).values()) == {False}
    finally:
        executor.close()


def test_with_dask_cuda_the_local_cuda_cluster_gets_the_plan(gpus, stand_in_dask_cuda):
    gpus(1)
    executor = start_executor(device="cuda", dashboard_address=None, verbose=False)
    try:
        executor.slots  # waits for the start
        [call] = stand_in_dask_cuda
        assert call["CUDA_VISIBLE_DEVICES"] == "0" and call["resources"] == {"GPU": 1} and call["n_workers"] == 1
        assert call["environ"][WORKER_DEVICE] == "cuda:0"
        assert not executor.local_cpus  # so the GRN goes to the GPU worker, not the coordinator
    finally:
        executor.close()


# --- a worker's device ---------------------------------------------------------------------


def test_a_worker_device_stands_for_auto_and_cuda_but_not_cpu(gpus, monkeypatch):
    import torch

    gpus(2)
    monkeypatch.setenv(WORKER_DEVICE, "cuda:0")
    for device in ("auto", "cuda", "cuda:1", torch.device("cuda", 1)):
        assert resolve_device(device) == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv(WORKER_DEVICE, "cpu")
    for device in ("auto", "cuda", "cuda:1"):
        assert resolve_device(device) == torch.device("cpu")


def test_cuda_n_is_checked_against_the_devices(gpus, monkeypatch):
    """Finding 7: 'cuda:5' on a 2-GPU machine failed deep inside torch."""
    import torch

    gpus(2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InputError, match=r"device='cuda:5' but 2 GPU\(s\) are visible"):
        resolve_device("cuda:5")
    for bad in ("gpu", "cpu:1", "cuda:x", 3):
        with pytest.raises(InputError):
            resolve_device(bad)


def test_the_warm_up_runs_on_the_worker_device(monkeypatch):
    """Finding 7: the warm-up compiled CPU kernels on GPU workers; it now scores on the
    worker's device."""
    import flashscenic.aucell as aucell

    seen = []
    real = aucell.get_aucell

    def spy(*args, device=None, **options):
        seen.append(device)
        return real(*args, device=device, **options)

    monkeypatch.setattr(aucell, "get_aucell", spy)
    monkeypatch.setenv(WORKER_DEVICE, "cpu")
    engine._warm()
    assert [str(d) for d in seen] == ["cpu"]


def test_the_command_line_refuses_more_workers_than_gpus_in_one_line(gpus, tmp_path, capsys):
    """Finding 2 as a user meets it: ``flashscenic demo`` on a one-GPU machine with two workers."""
    from flashscenic.cli import main

    gpus(1)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--n-workers", "2", "--dashboard-address", "none"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("flashscenic: error: n_workers=2 but 1 GPU(s)") and "\n" not in error
    assert not (tmp_path / "demo").exists()  # refused before any work
