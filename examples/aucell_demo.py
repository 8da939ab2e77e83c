"""AUCell alone on simulated data with planted regulons, through the Python API.

    .venv/bin/python examples/aucell_demo.py

Score the planted regulons (the truth, no GRN or pruning) in every cell and check that
each scores highest, on average, in a cell type where its TF is active.
"""

import time

from flashscenic import evaluate_regulons, get_aucell, simulate_dataset

data = simulate_dataset(n_cells=5000, n_genes=1000, seed=0)
print(f"{data.expression.shape[0]} cells x {data.expression.shape[1]} genes, {len(data.planted_tfs)} planted regulons")

start = time.perf_counter()
# k=None keeps every gene of a regulon, as pySCENIC does; seed fixes the tie order, so the
# result equals pySCENIC's aucell(..., seed=0). device='auto' uses CUDA when present.
auc = get_aucell(data.expression, data.regulon_weights, k=None, auc_threshold=0.05, device="auto", seed=0)
print(f"AUCell: {auc.shape[0]} cells x {auc.shape[1]} regulons in {time.perf_counter() - start:.2f} s")

found = evaluate_regulons(data.planted_regulons(), data, auc=auc)
table = found["table"]
print(table[["tf", "active_types", "top_type", "type_match"]].to_string(index=False))
print(f"{int(table['type_match'].sum())}/{len(table)} regulons score highest where their TF is active")
