"""The demo as a short script: the whole pipeline on simulated data, checked against the truth.

    .venv/bin/python examples/demo.py [OUT_DIR]

``flashscenic demo`` does the same through the results store and a Dask cluster; this is
the in-memory path, ``run_flashscenic``, which gives the same regulons and AUC.
"""

import sys
import tempfile
import time

from flashscenic import evaluate_regulons, run_flashscenic, simulate_dataset

out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="flashscenic-demo-")
data = simulate_dataset(n_cells=5000, n_genes=1000, n_tfs=30, seed=0)
paths = data.write_resources(out)  # Feather ranking database, motif2tf table, TF list

start = time.perf_counter()
result = run_flashscenic(
    data.expression, data.gene_names,
    tf_list_path=paths["tf_list"], ranking_db_paths=[paths["ranking_db"]],
    motif_annotation_path=paths["motif_annotation"],
    grn_n_steps=250,  # enough for 1,000 genes; real data: the default 1000
    device="auto", seed=0,
)
print(f"{len(result['regulon_names'])} regulons in {time.perf_counter() - start:.1f} s "
      f"({', '.join(f'{k} {v:.1f} s' for k, v in result['parameters']['timings'].items())})")

found = evaluate_regulons(result["regulons"], data, auc=result["auc_scores"])
print(found["table"].to_string(index=False, float_format="{:.2f}".format))
print(f"recall {found['recall']:.2f}, precision {found['precision']:.2f}, "
      f"mean target Jaccard {found['mean_target_jaccard']:.2f}")
