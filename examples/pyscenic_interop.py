"""Swap stages between flashscenic and pySCENIC through pySCENIC's own files.

    .venv/bin/python examples/pyscenic_interop.py [OUT_DIR]

Needs pySCENIC 0.12.1 and ctxcore 0.2.0 (``pip install -e .[test]`` installs them).

1. flashscenic's GRN and pruning write pySCENIC's adjacencies TSV and reg.csv
   (``flashscenic grn`` / ``flashscenic ctx`` on the command line);
2. pySCENIC's ``load_motifs`` and ``df2regulons`` read that reg.csv into its regulons;
3. pySCENIC's ``aucell`` and flashscenic's ``aucell`` score those regulons: same numbers;
4. flashscenic imports pySCENIC's AUC CSV back into a results store and writes a report.
"""

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from flashscenic import (build_modules, get_aucell, import_pyscenic, infer_grn, read_motifs_csv, write_adjacencies,
                         write_auc_csv, write_motifs_csv, write_report)
from flashscenic.params import Params
from flashscenic.stages import merge_pruned, prune_task
from flashscenic.simulate import simulate_dataset

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="flashscenic-interop-"))
data = simulate_dataset(n_cells=1500, n_genes=500, n_tfs=10, n_decoy_tfs=5, n_cell_types=4, seed=1)
paths = data.write_resources(out / "resources")
genes = list(data.gene_names)
cells = [f"cell{i}" for i in range(len(data.cell_types))]

# 1. flashscenic: GRN -> adjacencies.tsv, modules + pruning -> reg.csv (pySCENIC's formats)
grn = infer_grn(data.expression, genes, data.tf_names, n_steps=150, device="auto", seed=0, verbose=False)
write_adjacencies(grn.adjacencies, out / "adjacencies.tsv")
modules = build_modules(grn.weights, grn.tf_names, genes, device="auto")
params = Params(device="auto", seed=0, verbose=False)
table, _ = merge_pruned([prune_task(str(paths["ranking_db"]), modules, str(paths["motif_annotation"]), params)],
                        modules, params)
write_motifs_csv(table, out / "reg.csv")
print(f"flashscenic wrote {out / 'adjacencies.tsv'} ({len(grn.adjacencies):,} links) and "
      f"{out / 'reg.csv'} ({len(table)} enriched motifs)")

# 2. pySCENIC reads the reg.csv into its own Regulon objects
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if not hasattr(np, "object"):  # pySCENIC 0.12.1's transform module predates numpy 2
        np.object = object
    from pyscenic.aucell import aucell
    from pyscenic.transform import df2regulons
    from pyscenic.utils import load_motifs
regulons = df2regulons(load_motifs(str(out / "reg.csv")))
print(f"pySCENIC read {len(regulons)} regulons: {', '.join(sorted(r.name for r in regulons)[:6])}, ...")

# 3. the same regulons scored by pySCENIC's aucell and by flashscenic's get_aucell
expression = pd.DataFrame(data.expression, index=cells, columns=genes)
theirs = aucell(expression, regulons, auc_threshold=0.05, seed=0, num_workers=1)
theirs = theirs.loc[cells]  # pySCENIC returns the cells sorted by name: back to the matrix's order
weights = np.zeros((len(theirs.columns), len(genes)), dtype=np.float32)
by_name = {r.name: r for r in regulons}
for row, name in enumerate(theirs.columns):
    for gene, weight in by_name[name].gene2weight.items():
        weights[row, genes.index(gene)] = weight
ours = get_aucell(data.expression, weights, k=None, auc_threshold=0.05, device="auto", seed=0, verbose=False)
print(f"AUCell, pySCENIC vs flashscenic: max |difference| {np.abs(theirs.to_numpy() - ours).max():.1e} over "
      f"{ours.size:,} values")

# 4. pySCENIC's AUC back into a flashscenic results store, and a report
write_auc_csv(theirs, out / "auc_pyscenic.csv")
results = import_pyscenic(out / "results.zarr", auc=out / "auc_pyscenic.csv", motifs=out / "reg.csv",
                          adjacencies=out / "adjacencies.tsv")
results.write_cell_labels(pd.DataFrame({"cell_type": data.cell_types}))
print(f"imported into {results.path}; report: {write_report(results, out / 'report.html')}")
print(f"motif table read back: {len(read_motifs_csv(out / 'reg.csv'))} rows")
