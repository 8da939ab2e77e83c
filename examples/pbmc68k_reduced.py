"""Real cells: GRN, modules and AUCell on scanpy's bundled pbmc68k_reduced (700 PBMCs).

    .venv/bin/python examples/pbmc68k_reduced.py [--tf-list FILE] [--ranking-db FILE ...
        --motif-annotation FILE] [--grn-n-steps N]

No download is needed: the data ship with scanpy. Without ranking databases the modules
themselves are scored (co-expression modules, not yet motif-pruned regulons); give
``--ranking-db`` and ``--motif-annotation`` (e.g. from ``flashscenic download``) to prune
them into regulons first. The TF list defaults to a few dozen well-known immune TFs;
pass the full list (``flashscenic download`` fetches ``allTFs_hg38.txt``) for real work.
"""

import argparse
import time

import numpy as np
import scanpy as sc

from flashscenic import (CisTargetPruner, build_modules, get_aucell, infer_grn, regulon_specificity_scores,
                         regulons_to_adjacency)

IMMUNE_TFS = ["SPI1", "CEBPA", "CEBPB", "CEBPD", "IRF1", "IRF4", "IRF7", "IRF8", "PAX5", "EBF1", "TCF7", "LEF1",
              "GATA3", "TBX21", "EOMES", "RUNX1", "RUNX3", "FOXP3", "STAT1", "STAT3", "STAT4", "NFKB1", "REL",
              "JUN", "JUNB", "FOS", "FOSB", "ATF3", "KLF2", "KLF4", "KLF6", "MAFB", "MAF", "BCL6", "PRDM1", "XBP1",
              "ID2", "ID3", "IKZF1", "IKZF3", "POU2AF1", "SPIB", "TCF4", "NFIL3", "EGR1", "MYC", "YBX1", "HMGB2"]

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--tf-list", help="TF list, one name per line (default: a built-in list of immune TFs)")
parser.add_argument("--ranking-db", action="append", help="Feather ranking database(s): prune the modules")
parser.add_argument("--motif-annotation", help="motif2tf table, needed with --ranking-db")
parser.add_argument("--grn-n-steps", type=int, default=300, help="RegDiffusion steps (default: %(default)s)")
args = parser.parse_args()

adata = sc.datasets.pbmc68k_reduced()
expression = adata.raw.X.toarray() if hasattr(adata.raw.X, "toarray") else np.asarray(adata.raw.X)  # log-normalised
genes = list(adata.raw.var_names)
tfs = open(args.tf_list).read().split() if args.tf_list else IMMUNE_TFS
print(f"{expression.shape[0]} cells x {expression.shape[1]} genes; "
      f"{len(set(tfs) & set(genes))} of {len(tfs)} TFs are among the genes")

start = time.perf_counter()
grn = infer_grn(expression, genes, tfs, n_steps=args.grn_n_steps, device="auto", seed=0)
print(f"GRN: {np.count_nonzero(grn.weights):,} links of {len(grn.tf_names)} TFs in {time.perf_counter() - start:.1f} s")

modules = build_modules(grn.weights, grn.tf_names, genes, min_genes=10, device="auto")
print(f"{len(modules)} modules of {len({m.tf for m in modules})} TFs")

if args.ranking_db:
    pruner = CisTargetPruner(device="auto")
    pruner.load_database(args.ranking_db)
    pruner.load_annotations(args.motif_annotation)
    regulons = pruner.prune_modules([m.genes for m in modules], [m.tf for m in modules], genes,
                                    [m.weights for m in modules], contexts=[m.context for m in modules])
else:
    # Unpruned: each TF's top-50 module (its 50 strongest targets and itself) as its gene set.
    regulons = [{"name": f"{m.tf}(+)", "tf": m.tf, "genes": list(m.genes), "weights": [1.0] * len(m)}
                for m in modules if m.context[0] == "top50"]
print(f"{len(regulons)} gene sets scored: {', '.join(r['name'] for r in regulons[:8])}...")

auc = get_aucell(expression, regulons_to_adjacency(regulons, genes), k=None, device="auto", seed=0)
rss = regulon_specificity_scores(auc, adata.obs["bulk_labels"].astype(str).to_numpy(),
                                 [r["name"] for r in regulons])
print("\nMost specific gene set per cell type (regulon specificity score):")
for cell_type, row in rss.iterrows():
    print(f"  {cell_type:<30} {row.idxmax():<12} {row.max():.3f}")
