"""A run's life in a run folder: rerun, overwrite, resume, locks, kills. Nothing lost or mixed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from flashscenic._runfolder import RunFolder
from flashscenic.cli import main
from flashscenic.errors import (IncompleteStageError, ResumeMismatchError, RunExistsError, RunLockedError)
from flashscenic.params import Params
from flashscenic.pipeline import run_pipeline
from flashscenic.simulate import simulate_dataset
from flashscenic.store import open_results_store

from test_pipeline import SMALL, planted_adjacencies

CHUNK = 100  # cells per AUC chunk: 12 chunks of the 1,200 cells


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An h5ad input with cell types, adjacencies and resources, as a user has them on disk."""
    folder = tmp_path_factory.mktemp("inputs")
    data = simulate_dataset(**SMALL, seed=3)
    paths = data.write_resources(folder / "resources")
    obs = pd.DataFrame({"cell_type": data.cell_types}, index=[f"cell{i}" for i in range(len(data.cell_types))])
    anndata.AnnData(data.expression.astype(np.float32), obs=obs,
                    var=pd.DataFrame(index=list(data.gene_names))).write_h5ad(folder / "data.h5ad")
    planted_adjacencies(data).to_csv(folder / "adj.tsv", sep="\t", index=False)
    return {"input": folder / "data.h5ad", "adjacencies": folder / "adj.tsv", "tf_list": paths["tf_list"],
            "ranking_db": paths["ranking_db"], "motif_annotation": paths["motif_annotation"], "folder": folder}


def params(files, **changes) -> Params:
    return Params(tf_list_path=str(files["tf_list"]), ranking_db_paths=(str(files["ranking_db"]),),
                  motif_annotation_path=str(files["motif_annotation"]), device="cpu", verbose=False,
                  **{"seed": 7, **changes})


def run(files, out, **options):
    options.setdefault("params", params(files))
    options = {"cell_type_column": "cell_type", "report": False, **options}
    return run_pipeline(files["input"], out, adjacencies=files["adjacencies"], chunk_cells=CHUNK, **options)


@pytest.fixture(scope="module")
def lone(files, tmp_path_factory):
    """An uninterrupted run: what every other run must equal."""
    results = run(files, tmp_path_factory.mktemp("lone") / "run")
    return {"auc": results.read_auc(), "regulons": results.regulon_names, "rss": results.read_table("rss")}


def assert_equals_lone(results, lone) -> None:
    assert results.regulon_names == lone["regulons"]
    assert np.array_equal(results.read_auc(), lone["auc"])  # bit for bit
    pd.testing.assert_frame_equal(results.read_table("rss"), lone["rss"])


def snapshot(folder: Path) -> dict:
    """Every file of a run folder with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and p.name != ".lock"}


def test_a_run_folder_is_published_whole(files, tmp_path, lone):
    out = tmp_path / "run"
    results = run(files, out)
    assert_equals_lone(results, lone)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "expression.zarr", "results.zarr"]
    assert Path(results.expression_store) == (out / "expression.zarr").resolve()  # not the staging folder


def test_a_rerun_is_refused_and_the_results_stay_intact(files, tmp_path):
    out = tmp_path / "run"
    run(files, out)
    before = snapshot(out)
    with pytest.raises(RunExistsError, match="holds a finished run; resume it .*or replace it"):
        run(files, out, params=params(files, pruning_nes_threshold=2.5))
    assert snapshot(out) == before
    # the command line: one line, exit 2, nothing touched
    assert main(["run", str(files["input"]), "--out", str(out), "--adjacencies", str(files["adjacencies"]),
                 "--tf-list", str(files["tf_list"]), "--ranking-db", str(files["ranking_db"]), "--motif-annotation",
                 str(files["motif_annotation"]), "--n-workers", "0", "--quiet", "--cell-type-column", "cell_type"]) == 2
    assert snapshot(out) == before


def test_a_failed_overwrite_keeps_the_finished_run(files, tmp_path, lone):
    out = tmp_path / "run"
    run(files, out)
    before = snapshot(out)
    with pytest.raises(ValueError, match="no regulon survived pruning"):  # the new run fails in pruning
        run(files, out, params=params(files, pruning_nes_threshold=1e6), overwrite=True)
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(".partial/")} == before
    assert (out / ".partial" / "results.zarr").exists()  # the failed run stays staged, for --resume
    assert_equals_lone(open_results_store(out / "results.zarr"), lone)
    # a successful overwrite replaces it
    replaced = run(files, out, params=params(files, seed=8), overwrite=True)
    assert replaced.parameters["params"]["seed"] == 8
    assert not (out / ".partial").exists() and not (out / ".previous").exists()


@pytest.mark.parametrize("change, what", [
    ("input", "other input"),
    ("adjacencies", "other adjacency file"),
    ("log1p", "other input flags \\(log1p: False -> True\\)"),
    ("layer", "other input flags \\(layer: None -> 'counts'\\)"),
    ("cell_type_column", "other input flags \\(cell_type_column: 'cell_type' -> None\\)"),
    ("tf_list", "other resources"),
    ("parameter", "other parameters \\(pruning_nes_threshold: 3.0 -> 2.5\\)"),
])
def test_resume_is_refused_naming_what_changed(files, tmp_path, change, what):
    import shutil

    own = {k: v for k, v in files.items()}
    for name in ("input", "adjacencies", "tf_list"):  # copies this test may change
        own[name] = tmp_path / Path(files[name]).name
        shutil.copy(files[name], own[name])
    out = tmp_path / "run"
    adata = anndata.read_h5ad(own["input"])
    adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(own["input"])
    run(own, out)
    options, p = {}, params(own)
    if change == "input":
        adata.X[0, 0] += 1.0
        adata.write_h5ad(own["input"])
    elif change == "adjacencies":
        table = pd.read_csv(own["adjacencies"], sep="\t")
        table.iloc[:-1].to_csv(own["adjacencies"], sep="\t", index=False)
    elif change in ("log1p", "layer", "cell_type_column"):
        options[change] = {"log1p": True, "layer": "counts", "cell_type_column": None}[change]
    elif change == "tf_list":
        own["tf_list"].write_text(own["tf_list"].read_text() + "EXTRA_TF\n")
    else:
        p = params(own, pruning_nes_threshold=2.5)
    before = snapshot(out)
    with pytest.raises(ResumeMismatchError, match=f"cannot resume .*: the finished run was made with {what}"):
        run(own, out, params=p, resume=True, **options)
    assert snapshot(out) == before


def test_resume_of_a_finished_run_recomputes_nothing_and_a_seed_of_none_takes_the_runs(files, tmp_path):
    out = tmp_path / "run"
    first = run(files, out, params=params(files).replace(seed=None))
    seed = first.parameters["params"]["seed"]
    assert isinstance(seed, int)
    stamps = {s: v["at"] for s, v in first.stages.items()}
    timings = first.timings
    assert {"ingest", "grn", "auc", "rss"} <= set(timings) and "report" not in timings  # the h5ad was ingested
    again = run(files, out, params=params(files).replace(seed=None), resume=True)
    assert {s: v["at"] for s, v in again.stages.items()} == stamps
    assert again.parameters["params"]["seed"] == seed
    assert again.timings == timings  # nothing ingested or reported again


KILLER = """
import os, signal, sys
from flashscenic.params import Params
from flashscenic.pipeline import run_pipeline
from flashscenic.store import ResultsStore

write = ResultsStore.write_auc_chunk
written = []

def write_then_die(self, index, block):
    write(self, index, block)
    written.append(index)
    if len(written) == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind: as a killed job
    {sleep}

ResultsStore.write_auc_chunk = write_then_die
params = Params(tf_list_path={tf_list!r}, ranking_db_paths=({ranking_db!r},), motif_annotation_path={annotation!r},
                device="cpu", seed=7, verbose=False)
run_pipeline({input!r}, {out!r}, params=params, adjacencies={adjacencies!r}, chunk_cells={chunk}, report=False,
             cell_type_column="cell_type")
"""


def script(files, out, kill_after: int = -1, sleep: float = 0.0) -> str:
    return KILLER.format(kill_after=kill_after, sleep=f"import time; time.sleep({sleep})", tf_list=str(files["tf_list"]),
                         ranking_db=str(files["ranking_db"]), annotation=str(files["motif_annotation"]),
                         input=str(files["input"]), out=str(out), adjacencies=str(files["adjacencies"]), chunk=CHUNK)


def test_a_run_killed_mid_aucell_resumes_to_the_uninterrupted_result(files, tmp_path, lone):
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", script(files, out, kill_after=5)], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "results.zarr").exists()  # nothing published
    partial = open_results_store(out / ".partial" / "results.zarr")
    assert int(partial.auc_done().sum()) == 5 and not partial.is_complete("auc")
    assert partial.is_complete("pruning")
    # readers refuse the interrupted run instead of reading zeros
    with pytest.raises(IncompleteStageError, match="resume"):
        partial.read_auc()
    assert main(["export", str(out / ".partial" / "results.zarr"), "--format", "auc", "--out-dir",
                 str(tmp_path)]) == 2
    assert not list(tmp_path.glob("*.csv"))
    # a plain rerun is refused: the interrupted run is kept for --resume
    with pytest.raises(RunExistsError, match="holds an interrupted run"):
        run(files, out)
    # the dead run's lock is taken over; the resume scores the 7 missing chunks only
    resumed = run(files, out, resume=True)
    assert resumed.stages["auc"]["chunks_scored"] == 12 - 5
    assert_equals_lone(resumed, lone)
    assert not (out / ".partial").exists()


def test_a_second_run_into_a_locked_folder_is_refused_at_once(files, tmp_path, lone, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", script(files, out, sleep=0.4)], stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while f"pid {first.pid} " not in ((out / ".lock").read_text() if (out / ".lock").exists() else ""):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        start = time.perf_counter()
        with pytest.raises(RunLockedError, match=f"being written by another run \\(pid {first.pid} on "):
            run(files, out, overwrite=True)
        assert time.perf_counter() - start < 5
        code = main(["run", str(files["input"]), "--out", str(out), "--adjacencies", str(files["adjacencies"]),
                     "--tf-list", str(files["tf_list"]), "--ranking-db", str(files["ranking_db"]),
                     "--motif-annotation", str(files["motif_annotation"]), "--n-workers", "0", "--quiet", "--resume"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"pid {first.pid}" in err, err
        assert first.poll() is None, "the first run ended before the second was refused: the test proved nothing"
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert_equals_lone(open_results_store(out / "results.zarr"), lone)


def test_an_interrupted_swap_is_undone(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        stage = folder.start_afresh()
        (stage / "results.zarr").mkdir()
        (stage / "results.zarr" / "new").write_text("new")
    (folder.path / "results.zarr").mkdir()
    (folder.path / "results.zarr" / "old").write_text("old")
    # the swap stopped after moving the old run aside
    (folder.path / ".previous").mkdir()
    os.replace(folder.path / "results.zarr", folder.path / ".previous" / "results.zarr")
    with folder.lock():
        assert (folder.path / "results.zarr" / "old").read_text() == "old"
        assert (folder.partial / "results.zarr" / "new").read_text() == "new"
        assert not (folder.path / ".previous").exists()


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        assert f"pid {os.getpid()} " in (folder.path / ".lock").read_text()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on"):
            with RunFolder(tmp_path / "run").lock():
                pass
    with folder.lock():  # released
        pass


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        RunFolder(tmp_path / "file")


def test_an_executor_factory_starts_after_the_checks_and_is_closed(files, tmp_path):
    started = []

    class Recording:
        name, remote, slots = "recording", False, 1

        def share(self, value):
            return value

        def map(self, function, arguments, *, description, gpu=False, verbose=True):
            return [function(*a) for a in arguments]

        def stage(self, name):
            import contextlib

            started.append(name)
            return contextlib.nullcontext()

        def close(self):
            started.append("closed")

    run(files, tmp_path / "run", executor=Recording)
    assert started == ["grn", "pruning", "aucell", "closed"]
    started.clear()
    with pytest.raises(RunExistsError):
        run(files, tmp_path / "run", executor=Recording)
    assert started == []  # refused before any executor was started


def test_resume_after_a_failed_overwrite_finishes_the_run_whose_settings_are_given(files, tmp_path, lone):
    out = tmp_path / "run"
    run(files, out, report=False)
    with pytest.raises(ValueError, match="no regulon survived"):
        run(files, out, params=params(files, pruning_nes_threshold=1e6), overwrite=True)
    # the finished run's settings: it is the one resumed (and its report written), the failed one left staged
    resumed = run(files, out, resume=True, report=True)
    assert_equals_lone(resumed, lone)
    assert (out / "report.html").exists() and (out / ".partial" / "results.zarr").exists()
    # settings of neither: the refusal speaks of both runs
    with pytest.raises(ResumeMismatchError, match="the interrupted run in .*pruning_nes_threshold: 1000000.0 -> 2.0.*"
                                                  "the finished run was made with other parameters"):
        run(files, out, params=params(files, pruning_nes_threshold=2.0), resume=True)


def test_the_report_names_the_published_run_not_its_staging_folder(files, tmp_path):
    out = tmp_path / "run"
    run(files, out, report=True)
    page = (out / "report.html").read_text()
    assert str((out / "expression.zarr").resolve()) in page  # where the run's store is now
    assert ".partial" not in page


def test_an_input_store_inside_the_run_folder_is_refused(files, tmp_path):
    out = tmp_path / "run"
    run(files, out)
    before = snapshot(out)
    with pytest.raises(ValueError, match="lies in the run folder"):
        run_pipeline(out / "expression.zarr", out, params=params(files), adjacencies=files["adjacencies"],
                     overwrite=True)
    assert snapshot(out) == before


def test_a_backed_anndata_is_fingerprinted_by_its_file(files, tmp_path):
    import shutil

    path = tmp_path / "backed.h5ad"
    shutil.copy(files["input"], path)
    out = tmp_path / "run"
    run_pipeline(anndata.read_h5ad(path, backed="r"), out, params=params(files), adjacencies=files["adjacencies"],
                 cell_type_column="cell_type", chunk_cells=CHUNK, report=False)
    adata = anndata.read_h5ad(path)
    adata.X[10, 150] += 1.0  # one value, deep inside the matrix
    adata.write_h5ad(path)
    with pytest.raises(ResumeMismatchError, match="other input"):
        run_pipeline(anndata.read_h5ad(path, backed="r"), out, params=params(files), adjacencies=files["adjacencies"],
                     cell_type_column="cell_type", resume=True)


def test_an_in_memory_anndata_is_fingerprinted_by_its_content(files, tmp_path):
    adata = anndata.read_h5ad(files["input"])
    out = tmp_path / "run"
    options = dict(params=params(files), adjacencies=files["adjacencies"], cell_type_column="cell_type",
                   chunk_cells=CHUNK, report=False)
    run_pipeline(adata, out, **options)
    run_pipeline(adata.copy(), out, resume=True, **options)  # equal content: resumed
    adata.X[1199, 399] += 1.0
    with pytest.raises(ResumeMismatchError, match="other input \\(sha1"):
        run_pipeline(adata, out, resume=True, **options)


@pytest.mark.parametrize("executor, message", [
    ("dask", "executor must be an executor"),
    (42, "executor must be an executor"),
])
def test_a_bad_executor_is_refused_before_any_work(files, tmp_path, executor, message):
    with pytest.raises(ValueError, match=message):
        run(files, tmp_path / "run", executor=executor)
    assert not (tmp_path / "run").exists()


def test_input_mistakes_are_one_line_before_any_work(files, tmp_path):
    adata = anndata.read_h5ad(files["input"])
    with pytest.raises(ValueError, match="the AnnData has no layer 'nope'"):
        run_pipeline(adata, tmp_path / "run", params=params(files), adjacencies=files["adjacencies"], layer="nope")
    with pytest.raises(ValueError, match="the AnnData has no obs column 'kind'"):
        run_pipeline(adata, tmp_path / "run", params=params(files), adjacencies=files["adjacencies"],
                     cell_type_column="kind")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    (dict(pruning_rank_threshold=10**6), "pruning_rank_threshold=1000000 must be below the"),
    (dict(aucell_auc_threshold=0.999), "aucell_auc_threshold=0.999 selects 400 of 400 genes"),
])
def test_data_dependent_parameters_are_refused_before_any_stage(files, tmp_path, change, message, monkeypatch):
    import flashscenic.pipeline

    def no_stage(*args, **kwargs):
        raise AssertionError("a stage ran before the parameters were checked")

    monkeypatch.setattr(flashscenic.pipeline, "_stages", no_stage)
    monkeypatch.setattr(flashscenic.pipeline._Input, "expression_store", no_stage)  # not even the ingest
    with pytest.raises(ValueError, match=message):
        run(files, tmp_path / "run", params=params(files, **change))


def test_a_task_of_another_run_never_writes_into_this_one(files, tmp_path):
    from flashscenic.stages import aucell_chunk_task

    out = tmp_path / "run"
    results = run(files, out)
    before = results.read_auc().copy()
    with pytest.raises(ValueError, match="now holds another run"):
        aucell_chunk_task(str(results.path), results.expression_store, 0, np.ones((len(results.regulon_names), 400),
                                                                                    np.float32),
                          params(files), "an-earlier-run")
    assert np.array_equal(results.read_auc(), before)


def test_a_swap_interrupted_after_the_new_expression_store_moved_in_is_undone(tmp_path):
    folder = RunFolder(tmp_path / "run")
    for where, tag in [(folder.path, "old"), (folder.path / ".partial", "new")]:
        for name in ("results.zarr", "expression.zarr"):
            (where / name).mkdir(parents=True)
            (where / name / tag).write_text(tag)
    # the swap stopped after both old items went aside and the new expression store came in
    (folder.path / ".previous").mkdir()
    for name in ("results.zarr", "expression.zarr"):
        os.replace(folder.path / name, folder.path / ".previous" / name)
    os.replace(folder.partial / "expression.zarr", folder.path / "expression.zarr")
    with folder.lock():
        for name in ("results.zarr", "expression.zarr"):
            assert (folder.path / name / "old").exists() and (folder.partial / name / "new").exists()
    # and a swap that stopped after the new results came in is complete: the old run is gone
    (folder.path / ".previous").mkdir()
    os.replace(folder.path / "results.zarr", folder.path / ".previous" / "results.zarr")
    os.replace(folder.partial / "results.zarr", folder.path / "results.zarr")
    with folder.lock():
        assert (folder.path / "results.zarr" / "new").exists() and not (folder.path / ".previous").exists()
