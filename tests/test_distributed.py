"""The Dask engine: a run on any cluster equals the run in process, exactly.

Every test runs the pipeline from an expression store with given adjacencies (no GRN
training) on a small planted dataset: 1,000 cells x 400 genes, a ranking database of 10
planted TFs' motifs among decoys. The reference is ``run_pipeline`` in this process
(``InProcessExecutor``); the Dask runs must give the same regulons and motif table and a
bit-identical AUC, whatever the number of workers, the TF shards and the AUC chunk size
(chosen not to divide the cell count), from a dense or a CSR store; also when a worker
is killed mid-AUCell, when the run is interrupted and resumed, and on a cluster started
by ``cluster/local/start.sh``.

Clusters are ``distributed.LocalCluster`` process workers on 127.0.0.1, one thread each.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pytest
import scipy.sparse as sp

from flashscenic.errors import InputError, MissingFileError
from flashscenic.aucell import get_aucell
from flashscenic.executors import InProcessExecutor
from flashscenic.params import Params
from flashscenic.pipeline import run_pipeline
from flashscenic.stages import aucell_block, grn_task, prepare_resources, tf_shards
from flashscenic.store import ingest_expression

distributed = pytest.importorskip("distributed")
import flashscenic.distributed as engine  # noqa: E402
from flashscenic.distributed import (  # noqa: E402
    DaskExecutor,
    chunk_cells_for,
    plan_chunk_cells,
    start_executor,
    plan_cluster,
    torch_threads_for,
)

REPO = Path(__file__).resolve().parents[1]
N_CELLS, N_GENES, N_TFS = 1000, 400, 10


# --- data ------------------------------------------------------------------------------


def _write_case(root: Path) -> dict:
    """Expression (about half zeros, some ties), a planted ranking database, annotations, adjacencies."""
    rng = np.random.default_rng(7)
    genes = [f"G{j:03d}" for j in range(N_GENES)]
    tfs = genes[:N_TFS]
    targets = [rng.choice(np.arange(N_TFS, N_GENES), size=40, replace=False) for _ in range(N_TFS)]
    counts = rng.negative_binomial(2, 0.5, size=(N_CELLS, N_GENES)).astype(np.float32)
    for t, target in enumerate(targets):  # each TF drives its targets in a third of the cells
        on = rng.random(N_CELLS) < 1 / 3
        counts[np.ix_(on, target)] += rng.poisson(3, size=(on.sum(), target.size))
    counts[rng.random(counts.shape) < 0.35] = 0
    expression = np.log1p(counts).astype(np.float32)

    db_genes = genes + [f"X{j:04d}" for j in range(5600)]  # the database knows more genes
    n_db = len(db_genes)
    motifs, ranks = [], []
    for t, target in enumerate(targets):
        front = np.concatenate([target, [t]])
        for m in range(3):
            order = rng.permutation(n_db)
            perm = np.concatenate([rng.permutation(front), order[~np.isin(order, front)]])
            rank = np.empty(n_db, np.int16)
            rank[perm] = np.arange(n_db)
            ranks.append(rank)
            motifs.append(f"m_{tfs[t]}_{m}")
    for d in range(150):
        ranks.append(rng.permutation(n_db).astype(np.int16))
        motifs.append(f"decoy{d}")
    matrix = np.vstack(ranks)
    feather.write_feather(pa.table({**{g: matrix[:, j] for j, g in enumerate(db_genes)}, "motifs": motifs}),
                          root / "db.feather")
    columns = ["#motif_id", "motif_name", "motif_description", "source_name", "source_version", "gene_name",
               "motif_similarity_qvalue", "similar_motif_id", "similar_motif_description", "orthologous_identity",
               "orthologous_gene_name", "orthologous_species", "description"]
    rows = [[m, m, "", "src", "1", m.split("_")[1], 0.0, "", "", 1.0, "", "", "gene is directly annotated"]
            for m in motifs if m.startswith("m_")]
    pd.DataFrame(rows, columns=columns).to_csv(root / "ann.tbl", sep="\t", index=False)
    (root / "tfs.txt").write_text("\n".join(tfs) + "\n")
    links = [(tfs[t], genes[j], 2.0 + rng.random()) for t in range(N_TFS) for j in targets[t]]
    links += [(tfs[t], genes[j], 0.5) for t in range(N_TFS) for j in rng.choice(N_GENES, 20)]
    adjacencies = pd.DataFrame(links, columns=["TF", "target", "importance"]).drop_duplicates(["TF", "target"])

    cells = [f"cell{i:04d}" for i in range(N_CELLS)]
    labels = pd.DataFrame({"cell_type": [f"type{i % 3}" for i in range(N_CELLS)]}, index=cells)
    import anndata

    stores = {}
    for layout in ("dense", "csr"):
        x = sp.csr_matrix(expression) if layout == "csr" else expression
        data = anndata.AnnData(x, obs=labels, var=pd.DataFrame(index=genes))
        stores[layout] = str(ingest_expression(data, root / f"{layout}.zarr", chunk_rows=128, layout=layout,
                                               obs_columns=["cell_type"], verbose=False).path)
    resources = prepare_resources(tf_list_path=root / "tfs.txt", ranking_db_paths=[root / "db.feather"],
                                  motif_annotation_path=root / "ann.tbl", verbose=False)
    return {"stores": stores, "resources": resources, "adjacencies": adjacencies, "expression": expression}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    case = _write_case(root)
    case["params"] = Params(device="cpu", seed=3, verbose=False)
    case["root"] = root
    case["reference"] = {}
    for layout, store in case["stores"].items():
        results = _run(case, layout, root / f"reference-{layout}", InProcessExecutor())
        case["reference"][layout] = _outputs(results)
    return case


def _run(case, layout, out, executor, **options):
    return run_pipeline(case["stores"][layout], out, resources=case["resources"], params=case["params"],
                        executor=executor, adjacencies=case["adjacencies"], **options)


def _outputs(results) -> dict:
    return {"regulons": results.read_regulons(), "motifs": results.read_motifs(), "auc": results.read_auc(),
            "names": results.regulon_names, "rss": results.read_table("rss")}


def _assert_same(results, reference: dict) -> None:
    got = _outputs(results)
    assert got["names"] == reference["names"]
    assert got["regulons"] == reference["regulons"]
    pd.testing.assert_frame_equal(got["motifs"], reference["motifs"])
    assert got["auc"].dtype == np.float32
    assert got["auc"].tobytes() == reference["auc"].tobytes()  # bit-identical
    pd.testing.assert_frame_equal(got["rss"], reference["rss"])


def _local_cluster(n_workers: int, **options):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(processes=True, n_workers=n_workers, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address=None, **options)
    return DaskExecutor(Client(cluster), cluster, verbose=False)


# --- the reference itself ------------------------------------------------------------


def test_reference_is_sensible_and_layout_free(case):
    dense, csr = case["reference"]["dense"], case["reference"]["csr"]
    assert len(dense["names"]) == N_TFS
    assert dense["auc"].shape == (N_CELLS, N_TFS) and (dense["auc"] > 0).any(axis=0).all()
    assert dense["auc"].tobytes() == csr["auc"].tobytes()  # the store's layout changes nothing


@pytest.mark.parametrize("seed", [0, 1])
def test_get_aucell_rows_are_independent_of_split_and_batch_on_csr(case, seed, one_torch_thread):
    expression = sp.csr_matrix(case["expression"])
    rng = np.random.default_rng(seed)
    adjacency = (rng.random((12, N_GENES)) < 0.1).astype(np.float64)
    whole = get_aucell(expression, adjacency, k=None, device="cpu", batch_size=32, seed=5, verbose=False)
    assert whole.tobytes() == get_aucell(case["expression"], adjacency, k=None, device="cpu", batch_size=32, seed=5,
                                         verbose=False).tobytes()
    cuts = np.sort(rng.choice(np.arange(1, N_CELLS), size=6, replace=False))
    for batch in (1, 7, 500):
        parts = [get_aucell(expression[a:b], adjacency, k=None, device="cpu", batch_size=batch, seed=5, verbose=False)
                 for a, b in zip([0, *cuts], [*cuts, N_CELLS])]
        assert np.vstack(parts).tobytes() == whole.tobytes()


# --- distributed == in process -------------------------------------------------------


# read on the worker (a bound os.environ.get would be pickled with the client's environment);
# a lambda is pickled by value, so workers of an external cluster can run it too
_worker_env = lambda name: __import__("os").environ.get(name)  # noqa: E731


@pytest.mark.parametrize("n_workers, chunks", [(1, {"dense": 77, "csr": 333}), (2, {"dense": 130, "csr": 99}),
                                               (3, {"dense": 301, "csr": 71})])
def test_distributed_equals_in_process(case, tmp_path, n_workers, chunks):
    if n_workers == 1:  # the embedded-cluster path of start_executor, and never dask-cuda here
        executor = start_executor(n_workers=1, dashboard_address=None, verbose=False)
        assert isinstance(executor, DaskExecutor)
        if not plan_cluster().gpu:  # no GPU here: dask-cuda is never imported
            assert "dask_cuda" not in sys.modules
            assert type(executor.cluster).__name__ == "LocalCluster"
        assert executor.client.scheduler.address.startswith("tcp://127.0.0.1:")
        allocator = executor.client.run(_worker_env, "MALLOC_MMAP_THRESHOLD_")  # worker_environment()
        assert set(allocator.values()) == {str(32 * 2**20)}
    else:
        executor = _local_cluster(n_workers)
    try:
        assert executor.n_workers == n_workers and executor.slots == n_workers
        for layout, chunk in chunks.items():
            results = _run(case, layout, tmp_path / layout, executor, chunk_cells=chunk)
            assert results.chunk_rows == chunk and N_CELLS % chunk
            assert results.stages["auc"]["chunks_scored"] == -(-N_CELLS // chunk)
            _assert_same(results, case["reference"][layout])
        # default chunking on a cluster: planned from the workers' memory and number
        results = _run(case, "csr", tmp_path / "planned", executor)
        assert results.chunk_rows == executor.plan_chunk_cells(N_CELLS, N_GENES, 128)
        _assert_same(results, case["reference"]["csr"])
    finally:
        executor.close()


def test_the_embedded_cluster_starts_behind_the_run_and_a_lone_grn_runs_in_this_process(case, tmp_path,
                                                                                          monkeypatch):
    """The embedded CPU cluster starts in the background (the run ingests and trains meanwhile:
    the GRN starts while the workers are still being set up, whatever its gene budget), its
    single GRN task runs in the coordinator, every other stage on the workers, and the result
    is the in-process run's, bit for bit."""
    import flashscenic.pipeline as pipeline

    ran_here, start_done_at_grn, executors = [], [], []
    gate = threading.Event()  # the workers' set-up waits for the GRN to begin (at most a minute)
    set_up = engine._set_up_workers

    def held_set_up(client):
        gate.wait(60)
        set_up(client)

    def grn_here(*args):
        ran_here.append(os.getpid())
        if executors:
            start_done_at_grn.append(executors[0]._starting is None or executors[0]._starting.done())
        gate.set()
        return grn_task(*args)

    monkeypatch.setattr(pipeline, "grn_task", grn_here)  # a worker would run the real one, unpatched
    monkeypatch.setattr(engine, "_set_up_workers", held_set_up)
    params = case["params"].replace(grn_n_steps=3)
    reference = run_pipeline(case["stores"]["csr"], tmp_path / "in-process", resources=case["resources"],
                             params=params, executor=InProcessExecutor())
    assert ran_here == [os.getpid()]
    executor = start_executor(n_workers=2, dashboard_address=None, verbose=False)
    executors.append(executor)
    assert executor.local_cpus and executor._starting is not None  # returned before the workers are up
    try:
        results = run_pipeline(case["stores"]["csr"], tmp_path / "embedded", resources=case["resources"],
                               params=params, executor=executor)
        assert ran_here == [os.getpid()] * 2
        assert start_done_at_grn == [False], "the GRN waited for the cluster's start"
        assert executor.n_workers == 2 and results.chunk_rows == executor.plan_chunk_cells(N_CELLS, N_GENES, 128)
        _assert_same(results, _outputs(reference))
        # A consensus's GRN runs are tasks of their own: they go to the workers.
        results = run_pipeline(case["stores"]["csr"], tmp_path / "runs", resources=case["resources"],
                               params=params.replace(grn_runs=2), executor=executor)
        assert ran_here == [os.getpid()] * 2 and results.stages["grn"]["n_runs"] == 2
    finally:
        executor.close()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_a_run_on_cuda_in_process_and_on_one_gpu_worker_equals_the_cpu_run(case, tmp_path):
    """Given adjacencies (no GRN), device 'cuda': the same regulons and motif table as the CPU
    run (unweighted pruning is exact on a GPU) and the AUC within 1e-6; the cluster is one
    worker on the one GPU (dask-cuda's, or one process per GPU)."""
    cuda = case["params"].replace(device="cuda")

    def check(results, reference):
        got = _outputs(results)
        assert got["names"] == reference["names"] and got["regulons"] == reference["regulons"]
        pd.testing.assert_frame_equal(got["motifs"], reference["motifs"])
        np.testing.assert_allclose(got["auc"], reference["auc"], rtol=0, atol=1e-6)

    results = run_pipeline(case["stores"]["csr"], tmp_path / "in-process", resources=case["resources"], params=cuda,
                           executor=InProcessExecutor(), adjacencies=case["adjacencies"])
    check(results, case["reference"]["csr"])
    executor = start_executor(n_workers=1, device="cuda", dashboard_address=None, verbose=False)
    try:
        assert executor.has_gpu and executor.n_workers == 1 and not executor.local_cpus
        assert set(executor.client.run(_worker_env, "FLASHSCENIC_WORKER_DEVICE").values()) == {"cuda:0"}
        for layout in ("dense", "csr"):
            results = run_pipeline(case["stores"][layout], tmp_path / f"worker-{layout}", resources=case["resources"],
                                   params=cuda, executor=executor, adjacencies=case["adjacencies"])
            check(results, case["reference"][layout])
    finally:
        executor.close()


def test_an_external_or_given_cluster_is_not_local(case):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for options in ({"client": client}, {"scheduler": cluster.scheduler_address, "wait_for_workers": 10}):
            with start_executor(verbose=False, **options) as executor:
                assert not executor.local_cpus and executor.n_workers == 1


@pytest.mark.parametrize("limit", ["lots", -5, True])
def test_a_bad_memory_limit_is_refused_before_the_cluster_starts(limit):
    with pytest.raises(InputError, match=f"memory_limit must be 'auto'.*got {limit!r}"):
        start_executor(n_workers=1, memory_limit=limit, dashboard_address=None)


def test_a_cluster_that_fails_to_start_raises_at_first_use_and_closes_quietly(monkeypatch):
    def broken(*args):
        raise OSError("no port")

    monkeypatch.setattr(engine, "_embedded_cluster", broken)
    executor = start_executor(n_workers=1, dashboard_address=None, verbose=False)
    with pytest.raises(OSError, match="no port"):
        executor.slots
    with pytest.raises(OSError, match="no port"):  # at every use, not only the first
        with executor.stage("pruning"):  # a run meets it at its next stage
            pass
    executor.close()
    failing = start_executor(n_workers=1, dashboard_address=None, verbose=False)
    failing.close()  # never used: closing waits for the start and says nothing


def _fake_cluster_and_client(closed: list, plugin_error: Exception | None = None):
    """Stand-ins for an embedded cluster and its client that record their closing."""

    class FakeCluster:
        def close(self):
            closed.append("cluster")

    class FakeClient:
        def __init__(self, cluster, **options):
            pass

        def scheduler_info(self, **options):
            return {"workers": {}}

        def register_plugin(self, plugin, name=None):
            if plugin_error is not None:
                raise plugin_error

        def close(self):
            closed.append("client")

    return FakeCluster, FakeClient


def test_workers_that_cannot_be_set_up_fail_the_start_and_everything_started_is_closed(monkeypatch):
    closed = []
    FakeCluster, FakeClient = _fake_cluster_and_client(closed, RuntimeError("plugin refused"))
    monkeypatch.setattr(engine, "_embedded_cluster", lambda *args: FakeCluster())
    monkeypatch.setattr(distributed, "Client", FakeClient)
    executor = start_executor(n_workers=1, dashboard_address=None, verbose=False)
    with pytest.raises(RuntimeError, match="plugin refused"):
        executor.slots
    assert sorted(closed) == ["client", "cluster"]
    executor.close()


def _libraries_loaded() -> list[str]:
    import sys

    loaded = [name for name in ("flashscenic.stages", "flashscenic.cistarget") if name in sys.modules]
    aucell = sys.modules.get("flashscenic.aucell")
    return loaded + (["AUCell kernels"] if aucell is not None and aucell._score_keys.signatures else [])


def test_a_worker_loads_the_task_libraries_as_it_joins():
    """The setup plugin runs on each worker as it joins, before any task."""
    executor = _local_cluster(1)
    try:
        assert list(executor.client.run(_libraries_loaded).values()) == [
            ["flashscenic.stages", "flashscenic.cistarget", "AUCell kernels"]]
    finally:
        executor.close()


def test_closing_while_the_cluster_starts_closes_it_once_it_is_up(monkeypatch):
    release, closed = threading.Event(), []
    FakeCluster, FakeClient = _fake_cluster_and_client(closed)

    def slow_start(*args):
        release.wait(30)
        return FakeCluster()

    monkeypatch.setattr(engine, "_embedded_cluster", slow_start)
    monkeypatch.setattr(distributed, "Client", FakeClient)
    executor = start_executor(n_workers=1, dashboard_address=None, verbose=False)
    closer = threading.Thread(target=executor.close)
    closer.start()
    time.sleep(0.3)
    assert closer.is_alive() and closed == []  # close waits for the start ...
    release.set()
    closer.join(30)
    assert not closer.is_alive() and sorted(closed) == ["client", "cluster"]  # ... and closes what it started


def test_shards_split_whole_tfs_and_balance_work():
    from flashscenic.modules import Module

    sizes = {"A": [30, 50], "B": [200], "C": [20], "D": [100, 20], "E": [60]}
    modules = [Module(tf, (f"top{n}",), tuple(f"g{i}" for i in range(n)), (1.0,) * n)
               for tf, ns in sizes.items() for n in ns]
    for n in (1, 2, 3, 4, 10):
        shards = tf_shards(modules, n)
        assert len(shards) == min(n, len(sizes)) and all(shards)
        assert sorted(id(m) for s in shards for m in s) == sorted(id(m) for m in modules)
        assert all(len({m.tf for m in s} & {m.tf for m in t}) == 0 for i, s in enumerate(shards)
                   for t in shards[i + 1:])
        backwards = tf_shards(list(reversed(modules)), n)
        assert backwards is not None  # any order is accepted ...
        assert sorted(id(m) for s in backwards for m in s) == sorted(id(m) for m in modules)
        by_tfs = lambda found: sorted(sorted({m.tf for m in s}) for s in found)  # noqa: E731
        assert by_tfs(backwards) == by_tfs(shards)  # ... and gives the same split of the TFs
    loads = sorted(sum(len(m) for m in s) for s in tf_shards(modules, 2))
    assert loads == [220, 260]  # B 200 | D 120, A 80 | E 60 -> B's | C 20 -> the other: largest first, lightest shard


# --- chunk sizes from memory ----------------------------------------------------------


def test_chunk_cells_follow_memory_and_store():
    gib = 2**30
    assert chunk_cells_for(2 * gib, 2000) == int(2 * gib * 0.25 // (16 * 2000))
    assert chunk_cells_for(2 * gib, 2000, threads=4) == int(2 * gib * 0.25 / 4 // (16 * 2000))
    assert chunk_cells_for(1, 2000) == 256 and chunk_cells_for(None, 2000) == 200_000
    assert chunk_cells_for(10**15, 10) == 200_000
    # a million cells on 2 workers of 2 GiB: the memory bound, a multiple of the store's chunks
    assert plan_chunk_cells(10**6, 2000, store_chunk_rows=5000, memory_limit=2 * gib, slots=2) == 15_000
    # few cells: every worker thread gets about 4 chunks, each an even split of a store chunk
    assert plan_chunk_cells(100_000, 2000, store_chunk_rows=33_554, memory_limit=12 * gib, slots=2) == 11_185
    assert plan_chunk_cells(600, 400, store_chunk_rows=128, memory_limit=None, slots=2) == 512
    assert plan_chunk_cells(10, 400, store_chunk_rows=128, memory_limit=None, slots=2) == 10


def test_memory_limit_drives_the_default_chunks():
    executor = _local_cluster(1, memory_limit="1GiB")  # 1 GiB x 0.25 / (16 x 400 B) = 41,943 cells
    try:
        assert executor.worker_memory_limit == 2**30
        assert executor.plan_chunk_cells(10**6, N_GENES, 1000) == 41_000
    finally:
        executor.close()


# --- an external cluster from the cluster/local recipe ----------------------------------


def test_external_scheduler_started_by_the_local_recipe(case, tmp_path):
    env = {**os.environ, "DASK": str(Path(sys.executable).parent / "dask"), "PYTHON": sys.executable}
    if not Path(env["DASK"]).exists():
        pytest.skip("no dask command beside this Python")
    directory = tmp_path / "cluster"
    start = [str(REPO / "cluster/local/start.sh"), "--dir", str(directory), "--host", "127.0.0.1", "--port", "0",
             "--dashboard-port", "none", "--workers", "2", "--threads", "1"]
    try:
        done = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        scheduler_file = directory / "scheduler.json"
        assert scheduler_file.is_file()
        executor = start_executor(scheduler_file=scheduler_file, verbose=False)
        try:
            assert isinstance(executor, DaskExecutor) and executor.cluster is None
            assert executor.n_workers == 2
            assert all(address.startswith("tcp://127.0.0.1:") for address in executor._workers())
            # the recipe's dask-config: torch-friendly malloc settings in the workers
            allocator = executor.client.run(_worker_env, "MALLOC_MMAP_THRESHOLD_")
            assert set(allocator.values()) == {"33554432"}
            results = _run(case, "csr", tmp_path / "out", executor, chunk_cells=151)
            _assert_same(results, case["reference"]["csr"])
            address = executor.client.scheduler.address
        finally:
            executor.close()
        again = start_executor(scheduler=address, n_workers=2, verbose=False)  # by address too
        assert again.n_workers == 2
        again.close()
    finally:
        stopped = subprocess.run([str(REPO / "cluster/local/stop.sh"), "--dir", str(directory)], env=env,
                                 capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not (directory / "scheduler.pid").exists() and not (directory / "workers.pid").exists()


# --- faults ---------------------------------------------------------------------------


def _wait_for(path: Path, timeout: float = 120.0, abort: threading.Event | None = None) -> bool:
    """Wait until ``path`` exists (a barrier another process opens); False on timeout or abort."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or (abort is not None and abort.is_set()):
            return False
        time.sleep(0.005)
    return True


def _held(gate: str, victim: int, function, *args):
    """A task behind explicit barriers (files in ``gate``), so that a test kills a worker at a known point.

    On the victim worker: announce ``victim-busy`` and wait there to be killed (a task in hand
    that never finishes). On any other worker: run the task (its chunk is written), announce
    ``survivor-done``, and return only once the test has announced ``killed``.
    """
    gate = Path(gate)
    if os.getpid() == victim:
        (gate / "victim-busy").touch()
        _wait_for(gate / "released")  # only if the test gave up: then it fails on its own assertions
        return function(*args)
    value = function(*args)
    (gate / "survivor-done").touch()
    _wait_for(gate / "killed")
    return value


class _Held:
    """An executor whose AUCell tasks run behind ``_held``'s barriers."""

    def __init__(self, inner, gate: Path, victim: int):
        self.inner, self.gate, self.victim = inner, gate, victim

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def map(self, function, arguments, *, description, **options):
        if description == "AUCell":
            function = functools.partial(_held, str(self.gate), self.victim, function)
        return self.inner.map(function, arguments, description=description, **options)


def _killer(gate: Path, victim: int, wait_for: tuple[str, ...], before_kill=None):
    """A thread that kills ``victim`` once every barrier in ``wait_for`` is open, then opens ``killed``.

    Returns (thread, abort): set ``abort`` to stop waiting; either way the thread releases
    every task held at a barrier when it ends.
    """
    abort = threading.Event()

    def kill_at_the_barrier():
        try:
            if all(_wait_for(gate / name, abort=abort) for name in wait_for):
                if before_kill is not None:
                    before_kill()
                os.kill(victim, signal.SIGKILL)
        finally:
            (gate / "killed").touch()
            (gate / "released").touch()

    return threading.Thread(target=kill_at_the_barrier), abort


def test_worker_killed_during_aucell_gives_the_same_result(case, tmp_path):
    from flashscenic.store import open_results_store

    executor = _local_cluster(2)
    try:
        pids = executor.client.run(os.getpid)
        victim = sorted(pids.values())[0]
        out = tmp_path / "out"
        gate = tmp_path / "gate"
        gate.mkdir()
        seen: dict = {}

        def record():  # the victim holds a chunk, the other worker has written one: kill now
            done = open_results_store(out / ".partial" / "results.zarr").auc_done()  # unpublished run
            seen["done"], seen["chunks"] = int(done.sum()), done.size

        killer, abort = _killer(gate, victim, ("victim-busy", "survivor-done"), record)
        killer.start()
        try:
            results = _run(case, "dense", out, _Held(executor, gate, victim), chunk_cells=50)
        finally:
            abort.set()
            killer.join()
        assert "done" in seen, "the worker was not killed"
        assert seen["done"] >= 1  # at the barrier: one chunk written, ...
        assert seen["done"] < seen["chunks"] == 20  # killed mid-AUCell
        _assert_same(results, case["reference"]["dense"])
        with pytest.raises(ProcessLookupError):
            os.kill(victim, 0)
        assert victim not in executor.client.run(os.getpid).values()
    finally:
        executor.close()


def test_lost_shared_value_is_scattered_again(caplog, tmp_path):
    executor = _local_cluster(1)  # one worker: its death loses the scattered value
    try:
        [pid] = executor.client.run(os.getpid).values()
        shared = executor.share(np.arange(5.0))
        gate = tmp_path / "gate"
        gate.mkdir()
        killer, abort = _killer(gate, pid, ("victim-busy",))  # killed while it holds its first task
        killer.start()
        held = functools.partial(_held, str(gate), pid)
        tasks = [(np.sum, shared, i) for i in range(12)] + [(np.max, shared, 0)] * 2
        try:
            with caplog.at_level("WARNING", logger="flashscenic"):
                values = executor.map(held, [(_first, *task) for task in tasks], description="shared",
                                      verbose=False)
        finally:
            abort.set()
            killer.join()
        assert values == [10.0] * 12 + [4.0] * 2  # the same arguments twice: one task, both results
        assert "scattering it again" in caplog.text
        assert pid not in executor.client.run(os.getpid).values()
    finally:
        executor.close()


def _first(function, value, tag):
    """``function(value)``; ``tag`` only tells tasks apart."""
    return function(value)


class _Interrupted(Exception):
    pass


class _Recording:
    """Counts the tasks of each stage; with ``stop_after`` the AUCell stage stops after that many chunks."""

    def __init__(self, inner, stop_after=None):
        self.inner, self.stop_after, self.tasks = inner, stop_after, {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def map(self, function, arguments, *, description, **options):
        self.tasks[description] = self.tasks.get(description, 0) + len(arguments)
        if description == "AUCell" and self.stop_after is not None:
            self.inner.map(function, arguments[: self.stop_after], description=description, **options)
            raise _Interrupted("interrupted mid-AUCell")
        return self.inner.map(function, arguments, description=description, **options)


def test_interrupted_run_resumes_with_only_the_missing_chunks(case, tmp_path):
    from flashscenic.store import open_results_store

    executor = _local_cluster(2)
    try:
        first = _Recording(executor, stop_after=5)
        with pytest.raises(_Interrupted):
            _run(case, "csr", tmp_path, first, chunk_cells=90)
        assert not (tmp_path / "results.zarr").exists()  # an interrupted run is not published
        stored = open_results_store(tmp_path / ".partial" / "results.zarr")
        assert stored.is_complete("pruning") and not stored.is_complete("auc")
        missing = stored.missing_auc_chunks()
        assert len(missing) == 12 - 5

        second = _Recording(executor)
        results = _run(case, "csr", tmp_path, second, chunk_cells=90, resume=True)
        assert second.tasks == {"AUCell": len(missing)}  # no pruning again, no chunk twice
        assert results.stages["auc"]["chunks_scored"] == len(missing)
        _assert_same(results, case["reference"]["csr"])

        third = _Recording(executor)  # all done: nothing to run
        _run(case, "csr", tmp_path, third, resume=True)
        assert third.tasks == {}
    finally:
        executor.close()


# --- errors, settings ---------------------------------------------------------------


def _fail(path, value):
    with open(path, "a") as f:
        f.write("x")
    raise InputError(f"bad value {value}")


def test_user_errors_surface_as_themselves_and_are_not_retried(case, tmp_path, monkeypatch):
    executor = _local_cluster(2)
    try:
        calls = tmp_path / "calls"
        with pytest.raises(InputError, match="bad value 3") as error:
            executor.map(_fail, [(calls, 3)], description="fail", verbose=False)
        assert type(error.value) is InputError
        assert calls.read_text() == "x"  # once: a user error is not retried

        # a user error inside a pipeline task on a worker: AUCell's threshold selects every gene
        # (run_pipeline refuses it before any stage; the task itself must still raise it as itself)
        params = Params(device="cpu", seed=3, aucell_auc_threshold=0.999, verbose=False)
        with pytest.raises(InputError, match="auc_threshold=0.999 selects 400 of 400 genes"):
            executor.map(aucell_block, [(np.ones((3, 400), np.float32), np.ones((2, 400), np.float32), params)],
                         description="aucell", verbose=False)
        with pytest.raises(InputError, match="aucell_auc_threshold=0.999 selects 400 of 400 genes"):
            run_pipeline(case["stores"]["dense"], tmp_path / "out", resources=case["resources"], params=params,
                         executor=executor, adjacencies=case["adjacencies"])
        # torch threads: the host's CPUs (its affinity, its cgroup quota) shared by the two
        # one-thread workers; the workers are this process's children, on this host
        assert set(executor.torch_threads().values()) == {torch_threads_for(1, 2)}
    finally:
        executor.close()
    # what the two one-thread workers get on other hosts (the rule above, made visible)
    with monkeypatch.context() as patch:
        patch.setattr(os, "cpu_count", lambda: 16)
        patch.setattr(engine, "_cpu_quota", lambda: None)
        patch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
        assert torch_threads_for(1, 2) == 8  # a whole 16-core machine: half each
        patch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
        assert torch_threads_for(1, 2) == 4  # pinned to 4 cores of its own: all of them
        patch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
        patch.setattr(engine, "_cpu_quota", lambda: 3)
        assert torch_threads_for(1, 2) == 3  # a container of 3 CPUs per worker
        patch.setattr(os, "cpu_count", lambda: 2)
        patch.setattr(engine, "_cpu_quota", lambda: None)
        patch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        assert torch_threads_for(1, 2) == 1  # 2 cores, no quota, no pinning: cores // 2


def test_start_executor_choices(tmp_path, monkeypatch):
    assert isinstance(start_executor(n_workers=0, verbose=False), InProcessExecutor)
    with pytest.raises(InputError, match="give one of scheduler, scheduler_file, client, use_running; got "
                                         "scheduler, scheduler_file"):
        start_executor(scheduler="tcp://127.0.0.1:1", scheduler_file=tmp_path / "s.json")
    with pytest.raises(InputError, match="n_workers=0"):
        start_executor(n_workers=0, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(InputError, match="n_workers"):
        start_executor(n_workers=-1)
    with pytest.raises(InputError, match="threads_per_worker"):
        start_executor(threads_per_worker=0)
    with pytest.raises(MissingFileError, match="scheduler file"):
        start_executor(scheduler_file=tmp_path / "absent.json")


def test_torch_threads_never_oversubscribe(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(engine, "_cpu_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert torch_threads_for(1, 4) == 4  # 4 one-thread workers on a 16-core machine
    assert torch_threads_for(2, 16) == 1 and torch_threads_for(1, 32) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert torch_threads_for(1, 4) == 4  # pinned to 4 cores of its own (dask-cuda, SLURM)
    assert torch_threads_for(2, 4) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(engine, "_cpu_quota", lambda: 3)
    assert torch_threads_for(1, 1) == 3  # a container limited to 3 CPUs
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"total": 64 * 2**30})())
    assert engine.default_cpu_workers() == 3 and engine.default_cpu_workers(2) == 1
    monkeypatch.setattr(engine, "_cpu_quota", lambda: None)
    assert engine.default_cpu_workers() == 16
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"total": 8 * 2**30})())
    assert engine.default_cpu_workers() == 4  # at least 2 GiB each


def test_a_given_client_is_used_left_open_and_its_dashboard_shows_the_stages(case, tmp_path):
    """start_executor(client=...) and (use_running=True) run on the caller's cluster, name each stage
    as a Dask span (grn / pruning / aucell on the dashboard) and leave the client open."""
    from distributed import Client, LocalCluster

    with LocalCluster(processes=True, n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        executor = start_executor(client=client, verbose=False)
        assert executor.client is client
        results = _run(case, "dense", tmp_path / "given", executor)
        executor.close()
        assert client.status == "running"  # the caller's client stays open
        _assert_same(results, case["reference"]["dense"])

        def span_names(dask_scheduler):
            return sorted({s.name[-1] for s in dask_scheduler.extensions["spans"].spans.values()})

        # (with adjacencies the grn stage sends no task, so only a GRN run shows a grn span)
        assert {"pruning", "aucell"} <= set(client.run_on_scheduler(span_names))
        running = start_executor(use_running=True, verbose=False)
        assert running.client is client
        _assert_same(_run(case, "dense", tmp_path / "running", running), case["reference"]["dense"])
        running.close()
        assert client.status == "running"
    with pytest.raises(InputError, match="has no Dask client"):
        start_executor(use_running=True)
    with pytest.raises(InputError, match="give one of"):
        start_executor(client=object(), scheduler="tcp://127.0.0.1:1")
