"""The demo: the whole pipeline on simulated cells with planted regulons, checked against the plant.

``flashscenic demo`` is one call of ``run_demo``; ``make demo`` runs it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from .params import DEFAULT_DASHBOARD, Params

__all__ = ["run_demo", "DEMO_GRN_STEPS"]

logger = logging.getLogger(__name__)

DEMO_GRN_STEPS = 250  # RegDiffusion steps of the demo: recall and precision 1.0 on seeds 0-2


def run_demo(out: str | os.PathLike = "demo_out", *, n_cells: int = 5000, n_genes: int = 1000, n_tfs: int = 30,
             grn_n_steps: int = DEMO_GRN_STEPS, seed: int = 0, device: str = "auto", n_workers: int | None = None,
             dashboard_address: str | None = DEFAULT_DASHBOARD, verbose: bool = True) -> dict:
    """Simulate, run the pipeline into the run folder ``out`` (replacing an earlier demo there),
    compare the regulons with the planted ones; write ``out/summary.json`` and return it.

    The summary holds the recovery (``precision``, ``recall``, ``mean_target_jaccard``, the
    per-TF ``table`` as a DataFrame, not written to the JSON), sizes, seconds per stage and
    the executor's name. ``n_workers`` None: one worker per GPU when the device runs on GPUs
    (``plan_cluster``), else 2 CPU workers.
    """
    import anndata
    import pandas as pd

    from ._utils import atomic_path
    from .distributed import plan_cluster, start_executor
    from .pipeline import run_pipeline
    from .simulate import evaluate_regulons, simulate_dataset

    start = time.perf_counter()
    params = Params(grn_n_steps=grn_n_steps, device=device, seed=seed, verbose=verbose)  # checked first
    if n_workers != 0 and not plan_cluster(device, n_workers).gpu:  # checked first too: more workers than GPUs
        n_workers = 2 if n_workers is None else n_workers  # the demo's small world: two CPU workers suffice
    out = Path(out)
    data = simulate_dataset(n_cells=n_cells, n_genes=n_genes, n_tfs=n_tfs, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = data.write_resources(out / "resources")
    cells = pd.DataFrame({"cell_type": data.cell_types}, index=[f"cell{i:05d}" for i in range(len(data.cell_types))])
    adata = anndata.AnnData(data.expression, obs=cells, var=pd.DataFrame(index=list(data.gene_names)))
    logger.info("simulated %d cells x %d genes, %d cell types, %d planted TFs and %d decoys; a database of %d motifs "
                "x %d genes (seed %d)", adata.n_obs, adata.n_vars, len(data.cell_type_names), len(data.planted_tfs),
                len(data.decoy_tfs), len(data.motif_names), len(data.database_gene_names), seed)
    params = params.replace(tf_list_path=str(paths["tf_list"]), ranking_db_paths=(str(paths["ranking_db"]),),
                            motif_annotation_path=str(paths["motif_annotation"]))
    executor = start_executor(n_workers=n_workers, device=device, dashboard_address=dashboard_address,
                              verbose=verbose)
    try:  # the cluster starts while the run ingests and trains
        results = run_pipeline(adata, out, params=params, executor=executor, cell_type_column="cell_type",
                               overwrite=True)
        executor_name = executor.name
    finally:
        executor.close()
    regulons = results.read_regulons()
    found = evaluate_regulons(regulons, data, auc=results.read_auc())
    summary = {
        "planted_tfs": found["planted_tfs"], "recovered_tfs": found["recovered_tfs"],
        "false_regulons": found["false_regulons"], "precision": found["precision"], "recall": found["recall"],
        "mean_target_jaccard": found["mean_target_jaccard"], "n_cells": results.n_cells, "n_genes": adata.n_vars,
        "n_regulons": len(regulons), "seconds": round(time.perf_counter() - start, 2),
        "stage_seconds": {k: round(v, 2) for k, v in results.timings.items()}, "seed": seed,
        "grn_n_steps": grn_n_steps, "executor": executor_name,
    }
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "table": found["table"], "results": results}
