"""SCENIC for scanpy users: scanpy's bundled pbmc68k_reduced (700 PBMCs), results in the AnnData.

    .venv/bin/python examples/pbmc68k_reduced.py [--out DIR] [--grn-n-steps N]
        [--tf-list FILE --ranking-db FILE [--ranking-db FILE ...] --motif-annotation FILE]

Needs scanpy: ``pip install -e ".[examples]"`` (``make install`` installs it). The cells ship
with scanpy (no download). Without the three resource flags the human hg38 v10 resources (two
ranking databases, the motif2tf table and the TF list, about 1.5 GB) are downloaded on first
use and cached in $FLASHSCENIC_CACHE or ./flashscenic_data. Offline: fetch them once with
``flashscenic download --species human`` (later runs reuse the cache without the network), or
give your own files with the three flags. Outputs go to DIR (default ./pbmc68k_scenic).

``flashscenic.scenic(adata)`` runs GRN, modules, cisTarget pruning and AUCell and writes the
regulon activity to ``adata.obsm['X_aucell']``, the regulons' genes to ``adata.varm`` and the
regulons, parameters and versions to ``adata.uns['flashscenic']``. The script then plots the
activity with scanpy (a UMAP coloured by the most specific regulons, the mean AUC per cell
type) and writes the AnnData, results included, to ``DIR/pbmc68k_scenic.h5ad``.
"""

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display needed

import scanpy as sc  # noqa: E402

import flashscenic  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", default="pbmc68k_scenic", help="output folder (default: %(default)s)")
parser.add_argument("--grn-n-steps", type=int, default=300, help="RegDiffusion steps (default: %(default)s)")
parser.add_argument("--tf-list", help="TF list, one name per line (with --ranking-db and --motif-annotation)")
parser.add_argument("--ranking-db", action="append", help="Feather ranking database (repeatable)")
parser.add_argument("--motif-annotation", help="motif2tf annotation table")
parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda' (default: %(default)s)")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

adata = sc.datasets.pbmc68k_reduced()  # X is scaled; raw holds the log-normalised expression
adata.layers["log_norm"] = adata.raw[:, adata.var_names].X  # SCENIC ranks log-normalised values (sparse)
print(f"{adata.n_obs} cells x {adata.n_vars} genes, {adata.obs['bulk_labels'].nunique()} cell types")

try:
    flashscenic.scenic(adata, layer="log_norm", species="human", tf_list_path=args.tf_list,
                       ranking_db_paths=args.ranking_db, motif_annotation_path=args.motif_annotation,
                       grn_n_steps=args.grn_n_steps, device=args.device, seed=0)
except flashscenic.FlashscenicError as error:  # no regulon found, resources missing offline, ...
    sys.exit(f"pbmc68k_reduced.py: {error}")
result = adata.uns["flashscenic"]["X_aucell"]
if not len(result["regulon_names"]):  # nothing to rank or plot
    sys.exit("pbmc68k_reduced.py: no regulon was found; try more --grn-n-steps or other resources")
timings = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result["params"]["timings"].items())
print(f"{len(result['regulon_names'])} regulons ({timings}): obsm['X_aucell'] {adata.obsm['X_aucell'].shape}")

# The AUC as an AnnData of cells x regulons: scanpy plots it as it plots genes.
activity = flashscenic.regulon_activity(adata)
rss = flashscenic.rss_table(activity.X, activity.obs["bulk_labels"].astype(str).to_numpy(),
                            list(activity.var_names))
print("\nMost specific regulon per cell type (regulon specificity score):")
for cell_type, row in rss.iterrows():
    print(f"  {cell_type:<30} {row.idxmax():<12} {row.max():.3f}")
top = []  # up to four regulons to plot: each the most specific of a cell type, none twice
for cell_type in rss.max(axis=1).sort_values(ascending=False).index[: min(4, rss.shape[1])]:
    top.append(rss.loc[cell_type].drop(top).idxmax())


def save(figure, name: str) -> Path:
    """Write a figure under a temporary name, then rename it: never half a file."""
    path = out / name
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    figure.savefig(partial, dpi=100, bbox_inches="tight")
    os.replace(partial, path)
    return path


umap = save(sc.pl.umap(activity, color=["bulk_labels", *top], ncols=3, show=False, return_fig=True),
            "umap_regulons.png")
matrix = save(sc.pl.matrixplot(activity, list(activity.var_names), groupby="bulk_labels",
                               colorbar_title="mean AUC", show=False, return_fig=True), "matrixplot_regulons.png")

h5ad = out / "pbmc68k_scenic.h5ad"
partial = out / f".{h5ad.name}.partial"
adata.write_h5ad(partial)
os.replace(partial, h5ad)
print(f"\nwrote {umap}, {matrix} and {h5ad} (results in obsm, varm and uns['flashscenic'])")
