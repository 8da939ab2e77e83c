"""cisTarget pruning benchmark: flashscenic vs pySCENIC 0.12.1 / ctxcore 0.2.0 (and scenic-rs 0.3.0 with --ctx), on the CPU.

    .venv/bin/python benchmarks/cistarget.py --ref-python .venv-ref/bin/python [--out BENCHMARKS.md]
    # the ctx section instead: adjacencies to regulons, whole commands, scenic-rs too:
    .venv/bin/python benchmarks/cistarget.py --ctx --ref-python .venv-ref/bin/python \
        --scenic-rs-python .venv-scenic-rs/bin/python [--out BENCHMARKS.md]
    # the per-module rows only, both shapes, against the code of another checkout too:
    .venv/bin/python benchmarks/cistarget.py --ref-python .venv-ref/bin/python --per-module-only \
        --before /tmp/before --before-label 'HEAD (bb48ef5)'

Built like ``benchmarks/aucell.py``: one run, same machine, same data for every row; each
measured row in a fresh process (``_cistarget_reference.py``) with the same timing and
memory code; the references in their own venv, data passed through ``.npz``/``.tsv``
files in ``benchmarks/_work/``. Only the pruning is timed; building the database object
from the rank matrix is timed apart ("load").

Two shapes (``--shapes``): ``full``, 5,000 motifs x 20,000 genes and 500 modules of
20-500 genes, and ``small``, 1,500 motifs x 12,000 genes and 150 modules of 20-300 genes,
where fixed per-call costs weigh most. Data (fixed seed): a database of int16 rank
permutations, motifs x genes; modules of uniformly random size, the TF first with weight
1.0, GRN weights uniform in (0.01, 10); for each module a third of its genes are planted
near the top of a few motifs' rankings, so those motifs are enriched; a motif2tf table
annotating 5% of the motifs to each TF (plus most of its planted motifs), a third of the
rows failing the q-value filter.

pySCENIC's module2df is slow (about 1 s a module at full size), so it runs on a fixed
random subset of the modules (``--reference-modules``, default 100 of 500 at full size,
all 150 of the small shape); the ratios are per module, and the table says so. ctxcore's
loop runs every module. ``--per-module-only`` leaves out pySCENIC and the Feather reading:
what remains (ctxcore's loop, ``prune_single_module``, ``prune_batch``, ``motif_table``)
takes a few minutes. ``--before DIR`` also runs flashscenic's rows with the package in
DIR (e.g. ``git archive HEAD | tar -x -C DIR``) first on PYTHONPATH, so before/after
ratios come from one run.

``--ctx`` writes its own section, "ctx from adjacencies": the ``ctx`` step as a user runs
it, from four files (pySCENIC's adjacencies TSV, an expression CSV of counts, a Feather
ranking database of the real v10 shape, 5,876 motifs x 27,015 genes, and a motif2tf
.tbl; ``make_ctx_case``, 150 TFs over 2,500 cells x 3,000 genes; ``--quick``: a tiny
shape). Rows, each in a fresh process timed whole from start to exit
(``_ctx_reference.py`` also times the call alone): pySCENIC's own ``pyscenic ctx`` (the
reference, all cores); the ``flashscenic ctx`` command, first run and later runs (its rank
cache); ``flashscenic.steps.run_ctx`` in a script, with its default leading edges and with
``pyscenic_compat_leading_edge=True`` (which the command has no option for); scenic-rs's
``ctx``, with its defaults, which are pySCENIC's (in its own venv, ``--scenic-rs-python``).
Every implementation is given pySCENIC's ctx defaults (flashscenic:
``--module-percentile-thresholds 75 90``). Results: flashscenic's reg.csv rows against
pySCENIC's, per (TF, motif, module); the regulons (pySCENIC's ``df2regulons`` of its
reg.csv, in its venv) against every row's, per regulon name: same genes? Jaccard.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import command_line, machine, optional_python, write_section
import pandas as pd

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "_cistarget_reference.py"
SEED = 0
PLANTED_MOTIFS = 3  # motifs per module with a third of the module planted near the top
ANNOTATED_FRACTION = 0.05  # of all motifs, annotated to each TF
Q_VALUES = (0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.2)  # the last two fail the default fdr of 0.001
IDENTITIES = (1.0, 0.9, 0.5, 0.0)

# motifs, genes, modules, smallest module, largest module, pySCENIC modules
SHAPES = {"full": (5_000, 20_000, 500, 20, 500, 100), "small": (1_500, 12_000, 150, 20, 300, 150),
          "quick": (300, 6_000, 24, 20, 150, 12)}
FEATHER = {"full": (5_876, 27_015), "quick": (300, 2_000)}  # motifs x genes

# --ctx: motifs, database genes, cells, expression genes (a subset of the database's), TFs,
# background links per TF (the planted targets come on top)
CTX_SHAPES = {"full": (5_876, 27_015, 2_500, 3_000, 150, 600), "quick": (300, 6_000, 300, 600, 12, 150)}
CTX_TARGETS = (20, 80)  # planted targets per TF, uniform in this range
CTX_RUNNER = HERE / "_ctx_reference.py"
CTX_DATABASE = "synthetic.genes_vs_motifs.rankings.feather"  # ctxcore reads the type from the name


def make_case(n_motifs, n_genes, n_modules, smallest, largest):
    """Rank matrix, modules (gene indices, weights, TF first), and the motif2tf rows."""
    rng = np.random.default_rng(SEED)
    gene_names = np.array([f"G{j:05d}" for j in range(n_genes)])
    motif_names = np.array([f"motif{i:05d}" for i in range(n_motifs)])
    tfs = rng.choice(n_genes, size=n_modules, replace=False)
    modules, weights, planted_by_module, planted = [], [], [], {}
    for tf in tfs:
        size = int(rng.integers(smallest, largest + 1))
        targets = rng.choice(np.delete(np.arange(n_genes), tf), size=size - 1, replace=False)
        modules.append(np.concatenate([[tf], targets]))
        weights.append(np.concatenate([[1.0], rng.uniform(0.01, 10.0, size=size - 1)]))
        motifs = rng.choice(n_motifs, size=PLANTED_MOTIFS, replace=False)
        planted_by_module.append(motifs)
        for motif in motifs:
            planted.setdefault(int(motif), []).append(rng.choice(modules[-1], size=size // 3, replace=False))

    ranks = planted_ranks(rng, n_motifs, n_genes, planted)
    annotations = make_annotations(rng, gene_names[tfs], planted_by_module, motif_names)
    return {"ranks": ranks, "gene_names": gene_names, "motif_names": motif_names, "tfs": tfs,
            "module_offsets": np.cumsum([0] + [len(m) for m in modules]), "module_genes": np.concatenate(modules),
            "module_weight_values": np.concatenate(weights),
            "subset_order": rng.permutation(n_modules)}, annotations


def planted_ranks(rng, n_motifs: int, n_genes: int, planted: dict) -> np.ndarray:
    """Motifs x genes int16 rank permutations; ``planted[m]``: gene index arrays put near the top of motif m."""
    ranks = np.empty((n_motifs, n_genes), dtype=np.int16)
    for m in range(n_motifs):
        order = rng.permutation(n_genes)  # order[r] = the gene at rank r
        for top in planted.get(m, []):  # the planted genes start at a random rank below 3x their number
            rest = order[~np.isin(order, top)]
            cut = int(rng.integers(0, 3 * len(top)))
            order = np.concatenate([rest[:cut], rng.permutation(top), rest[cut:]])
        ranks[m, order] = np.arange(n_genes, dtype=np.int16)
    return ranks


def make_annotations(rng, tf_names, planted_by_tf, motif_names) -> pd.DataFrame:
    """motif2tf rows: each TF annotated to ANNOTATED_FRACTION of the motifs plus most of its
    planted ones, q-values and identities drawn from Q_VALUES and IDENTITIES."""
    n_motifs = len(motif_names)
    rows = []
    for tf, motifs in zip(tf_names, planted_by_tf):
        chosen = set(rng.choice(n_motifs, size=int(ANNOTATED_FRACTION * n_motifs), replace=False).tolist())
        chosen |= {int(m) for m in motifs if rng.random() < 0.8}
        for motif in sorted(chosen):
            q, identity = rng.choice(Q_VALUES), rng.choice(IDENTITIES)
            rows.append([motif_names[motif], f"name_{motif_names[motif]}", tf, q, identity,
                         "gene is directly annotated" if q == 0 else f"motif similar to {motif_names[motif]} ('q = {q}')"])
    return pd.DataFrame(rows, columns=["#motif_id", "motif_name", "gene_name", "motif_similarity_qvalue",
                                       "orthologous_identity", "description"])


def write_feather(path: Path, n_motifs: int, n_genes: int) -> None:
    """A Feather v2 ranking database of random permutations (see ``save_feather``)."""
    rng = np.random.default_rng(SEED + 1)
    by_gene = np.empty((n_genes, n_motifs), dtype=np.int16)
    for m in range(n_motifs):
        by_gene[:, m] = rng.permutation(n_genes)  # any permutation is a valid rank vector
    save_feather(path, by_gene, [f"motif{i:05d}" for i in range(n_motifs)], [f"G{j:05d}" for j in range(n_genes)])


def save_feather(path: Path, by_gene: np.ndarray, motif_names, gene_names) -> None:
    """A Feather v2 ranking database as cisTarget's: int16 gene columns (``by_gene``: genes x
    motifs), then ``motifs``; uncompressed."""
    import pyarrow as pa
    import pyarrow.feather as feather

    columns = [pa.array(row) for row in by_gene] + [pa.array(list(motif_names))]
    names = list(gene_names) + ["motifs"]
    feather.write_feather(pa.Table.from_arrays(columns, names=names), str(path), compression="uncompressed")


def run_case(python: str, impl: str, data: Path, workdir: Path, code: Path | None = None, **options) -> dict:
    """Run one implementation in a fresh process; return its JSON report plus its result arrays.
    ``code``: a directory holding another ``flashscenic`` package, put first on PYTHONPATH."""
    out = workdir / f"result_{impl}_{'_'.join(f'{k}{v}' for k, v in options.items() if k != 'annotations')}.npz"
    cmd = [python, str(RUNNER), "--impl", impl, "--data", str(data), "--out", str(out)]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    print(f"  {impl}", " ".join(f"{k}={v}" for k, v in options.items() if k != "annotations"),
          "" if code is None else f"(code in {code})", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{impl} failed with exit code {proc.returncode}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if out.exists():
        with np.load(out) as result:
            report["result"] = {key: result[key] for key in result.files}
        out.unlink()
    per_module = f", {report['seconds'] / report['n_modules']:.3g} s/module" if "n_modules" in report else ""
    print(f"    {report['seconds']:.3g} s{per_module}, peak RSS {report['peak_mib']:,.0f} MiB", flush=True)
    return report


def compare_tables(ours: dict, ref: dict, modules, tf_of_module) -> str:
    """pySCENIC's motif rows vs ours on the modules pySCENIC ran: keys, AUC, NES, leading edges."""
    tfs = set(tf_of_module[modules].tolist())
    keep = np.isin(ours["tf"], list(tfs))
    mine = {(t, m): k for k, (t, m) in enumerate(zip(ours["tf"][keep], ours["motif"][keep]))}
    rows = np.flatnonzero(keep)
    theirs = {(t, m): k for k, (t, m) in enumerate(zip(ref["tf"], ref["motif"]))}
    if set(mine) != set(theirs):
        return f"(TF, MotifID) sets DIFFER: {len(mine)} ours vs {len(theirs)} pySCENIC, {len(set(mine) & set(theirs))} shared"
    a = np.array([rows[mine[key]] for key in theirs])
    b = np.array(list(theirs.values()))
    if len(a) == 0:
        return "no rows on either side"
    auc = np.abs(ours["auc"][a] - ref["auc"][b]).max()
    nes = np.abs(ours["nes"][a] - ref["nes"][b]).max()
    at_max = int((ours["rank_at_max"][a] == ref["rank_at_max"][b]).sum())
    targets = sum(json.loads(x) == json.loads(y) for x, y in zip(ours["targets"][a], ref["targets"][b]))
    return (f"same {len(a)} (TF, MotifID); max \\|ΔAUC\\| {auc:.1e}, max \\|ΔNES\\| {nes:.1e}; "
            f"RankAtMax {at_max}/{len(a)}, TargetGenes {targets}/{len(a)} identical")


def compare_loops(ours: dict, ref: dict) -> str:
    """ctxcore's single-module results vs ours on the modules ctxcore ran."""
    position = {int(k): i for i, k in enumerate(ours["modules"])}
    rows = np.array([position[int(k)] for k in ref["modules"]])
    auc = np.abs(ours["aucs"][rows] - ref["aucs"]).max()
    nes = np.abs(ours["nes"][rows] - ref["nes"]).max()
    mine = {(int(ours["modules"][k]), m): (r, e) for k, m, r, e in
            zip(ours["edge_module"], ours["edge_motif"], ours["rank_at_max"], ours["edges"])}
    theirs = {(int(ref["modules"][k]), m): (r, e) for k, m, r, e in
              zip(ref["edge_module"], ref["edge_motif"], ref["rank_at_max"], ref["edges"])}
    mine = {key: value for key, value in mine.items() if key[0] in set(ref["modules"].tolist())}
    if set(mine) != set(theirs):
        return f"enriched (module, motif) sets DIFFER: {len(mine)} ours vs {len(theirs)} ctxcore"
    at_max = sum(mine[k][0] == theirs[k][0] for k in theirs)
    edges = sum(mine[k][1] == theirs[k][1] for k in theirs)
    return (f"same {len(theirs)} enriched (module, motif); max \\|ΔAUC\\| {auc:.1e}, max \\|ΔNES\\| {nes:.1e}; "
            f"RankAtMax {at_max}/{len(theirs)}, leading edges {edges}/{len(theirs)} identical")


def prune_rows(sizes: tuple, ref_python: str | None, repeats: int, workdir: Path, per_module_only: bool,
               before: Path | None, before_label: str) -> tuple[list, dict, list]:
    """Every pruning row of one shape; return the rows, versions and summary lines."""
    ours = sys.executable
    n_motifs, n_genes, n_modules, smallest, largest, n_reference = sizes
    print(f"pruning case: generating {n_motifs} motifs x {n_genes} genes, {n_modules} modules", flush=True)
    arrays, annotations = make_case(n_motifs, n_genes, n_modules, smallest, largest)
    data, tbl = workdir / "case.npz", workdir / "motifs.tbl"
    np.savez(data, **arrays)
    annotations.to_csv(tbl, sep="\t", index=False)
    tf_of_module = arrays["gene_names"][arrays["tfs"]]
    del arrays
    shape = f"{n_motifs:,} motifs x {n_genes:,} genes"
    versions, summary = {}, []
    codes = [(None, "")] + ([(before, f", before ({before_label})")] if before else [])

    # Batched path: motif rows with annotations, against pySCENIC's module2df.
    rows = []
    table_case = f"{shape}, {n_modules} modules of {smallest}-{largest} genes, {len(annotations):,} annotation rows"
    refs = {}
    if ref_python and not per_module_only:
        for workers in (1, 2):
            r = run_case(ref_python, "pyscenic", data, workdir, annotations=tbl, workers=workers, modules=n_reference)
            refs[workers] = r
            versions["reference"] = r["versions"]
    fast = {}  # (compat, code label) -> report
    for compat in (0,) if per_module_only else (1, 0):
        for code, suffix in codes:
            r = run_case(ours, "flashscenic", data, workdir, code, annotations=tbl, compat=compat, repeats=repeats)
            fast[compat, suffix] = r
            versions.setdefault("ours", r["versions"])
    subset = "" if not refs or refs[1]["n_modules"] == n_modules else \
        f" (timed on a fixed random subset of {refs[1]['n_modules']} of the {n_modules} modules)"
    for workers, r in refs.items():
        rows.append(prune_row(table_case, f"pySCENIC 0.12.1 module2df, {workers} process{'es' if workers > 1 else ''}"
                              + subset, r, None, "reference"))
    for (compat, suffix), r in fast.items():
        label = "flashscenic motif_table, " + ("pyscenic_compat_leading_edge=True" if compat else "default (bug #635 fixed)")
        check = "no reference run" if not refs else compare_tables(r["result"], refs[1]["result"], refs[1]["result"]["modules"], tf_of_module)
        if refs and not compat:
            check += " (leading edges differ by design where pySCENIC takes another motif's curve)"
        rows.append(prune_row(table_case, label + suffix, r, refs, check))
    for workers, r in refs.items():
        summary.append(f"{shape}: pySCENIC ({workers} process{'es' if workers > 1 else ''}) time per module / "
                       f"flashscenic motif_table time per module: {number(per_module(r) / per_module(fast[1, '']))}x "
                       f"with compat leading edges, {number(per_module(r) / per_module(fast[0, '']))}x with the default "
                       "(goal: >= 30x).")

    # Per-module API: no annotations, against ctxcore's recovery + NES + leading_edge.
    loop_case = f"{shape}, {n_modules} modules of {smallest}-{largest} genes, one module at a time, no annotations"
    loop_ref = None
    if ref_python:
        loop_ref = run_case(ref_python, "ctxcore-loop", data, workdir)
        versions["loop_reference"] = loop_ref["versions"]
        rows.append(prune_row(loop_case, "ctxcore recovery + NES + leading_edge per module", loop_ref, None, "reference"))
    per_call = {}  # (impl, code label) -> report
    for impl, label in (("flashscenic-loop", "flashscenic prune_single_module per module on a motifs x genes int16 "
                         "tensor (the documented call)"),
                        ("flashscenic-loop-database", "flashscenic prune_single_module per module on a RankingDatabase"),
                        ("flashscenic-batch", "flashscenic CisTargetPruner.prune_batch, all modules in one call")):
        for code, suffix in codes:
            r = run_case(ours, impl, data, workdir, code, repeats=repeats)
            per_call[impl, suffix] = r
            check = compare_loops(r["result"], loop_ref["result"]) if loop_ref else "no reference run"
            rows.append(prune_row(loop_case, label + suffix, r, {1: loop_ref} if loop_ref else {}, check))
    for code, suffix in codes:
        what = "after" if code is None else f"before ({before_label})"
        loop, batch = per_call["flashscenic-loop", suffix], per_call["flashscenic-batch", suffix]
        on_database = per_call["flashscenic-loop-database", suffix]
        line = f"{shape}, {what}: "
        if loop_ref:
            line += (f"ctxcore time per module / prune_single_module time per module: "
                     f"{number(per_module(loop_ref) / per_module(loop))}x on a tensor (the documented call), "
                     f"{number(per_module(loop_ref) / per_module(on_database))}x on a RankingDatabase, "
                     "/ prune_batch time per module: "
                     f"{number(per_module(loop_ref) / per_module(batch))}x (goal: >= 30x); ")
        line += (f"prune_batch {number(per_module(batch) * 1000)} ms a module vs motif_table "
                 f"{number(per_module(fast[0, suffix]) * 1000)} ms (goal: prune_batch no slower).")
        summary.append(line)
    if before:
        for impl, label in (("flashscenic-loop", "prune_single_module on a tensor"),
                            ("flashscenic-loop-database", "prune_single_module on a RankingDatabase"),
                            ("flashscenic-batch", "prune_batch")):
            summary.append(f"{shape}: {label} before / after, time per module: "
                           f"{number(per_module(per_call[impl, codes[1][1]]) / per_module(per_call[impl, '']))}x.")
    data.unlink()
    return rows, versions, summary


def read_rows(feather_size: tuple, ref_python: str | None, workdir: Path) -> tuple[list, list]:
    """Reading a Feather database: pandas vs flashscenic; return the rows and a summary line."""
    ours = sys.executable
    n_motifs, n_genes = feather_size
    feather_file = workdir / "database.feather"
    print(f"Feather case: writing {n_motifs} motifs x {n_genes} genes", flush=True)
    write_feather(feather_file, n_motifs, n_genes)
    size_mib = feather_file.stat().st_size / 2**20
    read_case = f"Feather v2, {n_motifs:,} motifs x {n_genes:,} genes int16, uncompressed, {size_mib:,.0f} MiB"
    rows, summary = [], []
    for python, impl, label in ((ref_python or ours, "read-pandas", "pyarrow.feather.read_feather (pandas DataFrame)"),
                                (ours, "read-flashscenic", "flashscenic.rankdb.read_ranking_database, cache=False (read + validate)")):
        r = run_case(python, impl, feather_file, workdir)
        over = r["peak_mib"] - r["baseline_mib"]
        rows.append([read_case, label, number(r["seconds"]), f"{r['peak_mib']:,.0f}", f"{over:,.0f}",
                     f"{over / size_mib:.2f}x"])
        if impl == "read-flashscenic":
            summary.append(f"Reading the Feather database: peak memory over the RSS before / file size = "
                           f"{over / size_mib:.2f}x (goal: <= 1.3x).")
    return rows, summary


def make_ctx_case(workdir: Path, n_motifs, n_db_genes, n_cells, n_genes, n_tfs, n_background) -> dict:
    """The four input files of a ctx run; return their paths.

    Expression (cells x genes, integer counts, CSV): log-means = gene level + cell depth +
    TF activities (standard normal per cell) x loadings, where each TF loads 1.0 on itself and
    uniform (0.3, 0.8) on its planted targets, so TF and targets correlate positively (the
    modules are activating); counts Poisson. Adjacencies (pySCENIC's TSV, by decreasing
    importance): each TF's planted targets with importance log-normal(1, 0.5), plus
    ``n_background`` random genes with log-normal(-1.5, 1). Database: int16 rank permutations
    of ``n_db_genes`` genes, the expression genes a random subset of them; half of each TF's
    targets planted near the top of PLANTED_MOTIFS motifs. motif2tf table as ``make_case``'s.
    """
    rng = np.random.default_rng(SEED + 2)
    db_genes = np.array([f"G{j:05d}" for j in range(n_db_genes)])
    motif_names = np.array([f"motif{i:05d}" for i in range(n_motifs)])
    in_db = np.sort(rng.choice(n_db_genes, size=n_genes, replace=False))
    genes = db_genes[in_db]
    tfs = rng.choice(n_genes, size=n_tfs, replace=False)
    loadings = np.zeros((n_tfs, n_genes))
    links, planted_by_tf, planted = [], [], {}
    for t, tf in enumerate(tfs):
        size = int(rng.integers(CTX_TARGETS[0], CTX_TARGETS[1] + 1))
        chosen = rng.choice(np.delete(np.arange(n_genes), tf), size=size + n_background, replace=False)
        targets = chosen[:size]
        loadings[t, tf] = 1.0
        loadings[t, targets] = rng.uniform(0.3, 0.8, size)
        importance = np.concatenate([rng.lognormal(1.0, 0.5, size), rng.lognormal(-1.5, 1.0, n_background)])
        links.append(pd.DataFrame({"TF": genes[tf], "target": genes[chosen], "importance": importance}))
        motifs = rng.choice(n_motifs, size=PLANTED_MOTIFS, replace=False)
        planted_by_tf.append(motifs)
        for motif in motifs:
            planted.setdefault(int(motif), []).append(in_db[rng.choice(targets, size=size // 2, replace=False)])
    log_mean = (rng.normal(-0.5, 1.0, n_genes) + rng.normal(0.0, 0.3, (n_cells, 1))
                + rng.standard_normal((n_cells, n_tfs)) @ loadings)
    counts = rng.poisson(np.exp(np.minimum(log_mean, 6.0)))
    annotations = make_annotations(rng, genes[tfs], planted_by_tf, motif_names)
    ranks = planted_ranks(rng, n_motifs, n_db_genes, planted)

    paths = {"adjacencies": workdir / "adjacencies.tsv", "expression": workdir / "expression.csv",
             "database": workdir / CTX_DATABASE, "annotations": workdir / "motifs.tbl"}
    adjacencies = pd.concat(links, ignore_index=True).sort_values("importance", ascending=False, kind="stable")
    adjacencies.to_csv(paths["adjacencies"], sep="\t", index=False)
    pd.DataFrame(counts, index=[f"cell{c:05d}" for c in range(n_cells)], columns=genes).to_csv(paths["expression"])
    annotations.to_csv(paths["annotations"], sep="\t", index=False)
    save_feather(paths["database"], np.ascontiguousarray(ranks.T), motif_names, db_genes)
    return paths


def run_process(cmd: list, workdir: Path, label: str) -> dict:
    """Run ``cmd`` in a fresh process, timed from start to exit; its JSON report (the last line
    of its stdout, if any) plus ``process_seconds`` and ``tree_peak_mib``, the largest resident
    set of the process and of the children it waited for (``wait4``)."""
    print(f"  {label}", flush=True)
    with open(workdir / "stdout.txt", "w+") as out, open(workdir / "stderr.txt", "w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.stderr.write(stdout + stderr)
        raise SystemExit(f"{label} failed with exit code {proc.returncode}")
    lines = stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    report.update(process_seconds=seconds, tree_peak_mib=usage.ru_maxrss / 1024)
    print(f"    {seconds:.3g} s whole process"
          + (f", {report['call_seconds']:.3g} s the call" if report.get("call_seconds") else "")
          + f", peak RSS {report['tree_peak_mib']:,.0f} MiB", flush=True)
    return report


def ctx_runner(python: str, impl: str, paths: dict, out: Path, **options) -> list:
    """The command line of one ``_ctx_reference.py`` run."""
    cmd = [python, str(CTX_RUNNER), "--impl", impl, "--out", str(out)]
    cmd += [arg for key, path in paths.items() for arg in (f"--{key}", str(path))]
    return cmd + [arg for key, value in options.items() for arg in (f"--{key}", str(value))]


def best_of(reports: list) -> dict:
    """Fastest process and fastest call over fresh-process repeats; the largest peak."""
    best = dict(min(reports, key=lambda r: r["process_seconds"]))
    for key in ("call_seconds", "load_seconds"):
        if best.get(key) is not None:
            best[key] = min(r[key] for r in reports)
    best["tree_peak_mib"] = max(r["tree_peak_mib"] for r in reports)
    best["repeats"] = len(reports)
    return best


def motif_rows(path: Path) -> dict:
    """A reg.csv's rows keyed (TF, MotifID, Context labels, Database): one row per module and motif.
    (pySCENIC 0.12.1 under numpy 2 writes its weights as ``np.float64(2.4)``, which
    ``read_motifs_csv`` reads.)"""
    from flashscenic.regulons import read_motifs_csv

    table = read_motifs_csv(path)
    return {(r.TF, r.MotifID, frozenset(r.Context), r.Database): r for r in table.itertuples()}


def compare_motif_rows(ours: dict, ref: dict) -> str:
    """flashscenic's reg.csv rows vs pySCENIC's: keys, AUC, NES, RankAtMax, TargetGenes."""
    if set(ours) != set(ref):
        shared = set(ours) & set(ref)
        return (f"(TF, MotifID, module) rows DIFFER: {len(ours)} ours vs {len(ref)} pySCENIC, {len(shared)} shared; "
                f"TFs {len({k[0] for k in ours})} vs {len({k[0] for k in ref})}")
    if not ref:
        return "no rows on either side"
    auc = max(abs(ours[k].AUC - ref[k].AUC) for k in ref)
    nes = max(abs(ours[k].NES - ref[k].NES) for k in ref)
    at_max = sum(ours[k].RankAtMax == ref[k].RankAtMax for k in ref)
    targets, weight = 0, 0.0  # rows with the same target genes; largest relative weight difference on those
    for k in ref:
        mine, theirs = dict(ours[k].TargetGenes), dict(ref[k].TargetGenes)
        if mine.keys() == theirs.keys():
            targets += 1
            weight = max([weight] + [abs(mine[g] - w) / abs(w) for g, w in theirs.items() if w])
    return (f"same {len(ref)} (TF, MotifID, module) rows of {len({k[0] for k in ref})} TFs; max \\|ΔAUC\\| {auc:.1e}, "
            f"max \\|ΔNES\\| {nes:.1e}; RankAtMax {at_max}/{len(ref)}, TargetGenes genes {targets}/{len(ref)} "
            f"identical (their weights: max relative difference {weight:.1e})")


def compare_regulons(mine: dict, ref: dict, what: str) -> str:
    """Regulons (name -> gene set) against ``what``'s: names, identical gene sets, Jaccard."""
    shared = sorted(set(mine) & set(ref))
    if not shared:
        return f"no regulon name shared with {what} ({len(mine)} vs {len(ref)})"
    jaccard = [len(mine[n] & ref[n]) / len(mine[n] | ref[n]) for n in shared]
    names = "same" if set(mine) == set(ref) else f"{len(shared)} shared of {len(mine)} vs {len(ref)}"
    return (f"vs {what}'s regulons: {names} names ({len(ref)}); gene sets identical "
            f"{sum(mine[n] == ref[n] for n in shared)}/{len(shared)}, Jaccard min {min(jaccard):.3f}, "
            f"mean {np.mean(jaccard):.3f}")


def ctx_rows(sizes: tuple, ref_python: str | None, scenic_rs_python: str | None, repeats: int,
             workdir: Path) -> tuple[list, dict, list]:
    """Every row of the ctx section; return the rows, versions and summary lines."""
    from flashscenic.regulons import read_motifs_csv, regulons_from_motifs

    n_motifs, n_db_genes, n_cells, n_genes, n_tfs, n_background = sizes
    print(f"ctx case: writing {n_motifs} motifs x {n_db_genes} genes, {n_cells} cells x {n_genes} genes, "
          f"{n_tfs} TFs", flush=True)
    paths = make_ctx_case(workdir, *sizes)
    n_links = sum(1 for _ in open(paths["adjacencies"])) - 1
    database = paths["database"]
    case = (f"{n_tfs} TFs, {n_links:,} adjacencies; expression {n_cells:,} cells x {n_genes:,} genes (CSV counts, "
            f"{paths['expression'].stat().st_size / 2**20:,.0f} MiB); Feather {n_motifs:,} motifs x {n_db_genes:,} "
            f"genes int16 ({database.stat().st_size / 2**20:,.0f} MiB)")
    workers = os.cpu_count()
    results, versions = [], {}  # results: (label, report, motif rows or None, regulons name -> set)

    ref_rows, ref_regulons, py, rs = None, None, None, None
    if ref_python:
        out = workdir / "pyscenic_reg.csv"
        py = run_process(ctx_runner(ref_python, "pyscenic", paths, out, workers=workers), workdir, "pyscenic ctx")
        versions["reference"] = py["versions"]
        as_json = workdir / "pyscenic_regulons.json"
        run_process([ref_python, str(CTX_RUNNER), "--impl", "pyscenic-regulons", "--reg", str(out), "--out",
                     str(as_json)], workdir, "pySCENIC df2regulons of its reg.csv (untimed)")
        ref_rows = motif_rows(out)
        ref_regulons = {name: set(genes) for name, genes in json.loads(as_json.read_text()).items()}
        py["repeats"] = 1
        results.append((f"pySCENIC 0.12.1 `pyscenic ctx`, custom_multiprocessing, {workers} workers", py, ref_rows,
                        ref_regulons))

    def ours(out: Path) -> tuple[dict, dict]:
        """Our reg.csv's rows, and its regulons as flashscenic reads them (pySCENIC's df2regulons rules)."""
        return motif_rows(out), {r["name"]: set(r["genes"]) for r in regulons_from_motifs(read_motifs_csv(out))}

    for cache in database.parent.glob(database.name + "?*"):  # flashscenic's rank cache beside the database
        cache.unlink()
    out = workdir / "flashscenic_reg.csv"
    command = [str(Path(sys.executable).parent / "flashscenic"), "ctx", str(paths["adjacencies"]), str(database),
               "--annotations", str(paths["annotations"]), "--expression", str(paths["expression"]), "-o", str(out),
               "--module-percentile-thresholds", "75", "90", "--device", "cpu", "--quiet"]
    first = run_process(command, workdir, "flashscenic ctx, first run")
    first["repeats"] = 1
    cached = any(database.parent.glob(database.name + "?*"))  # none under 16 MiB (rankdb._CACHE_MIN_BYTES)
    later = best_of([run_process(command, workdir, "flashscenic ctx, later run") for _ in range(repeats)])
    command_rows, command_regulons = ours(out)
    results.append(("flashscenic `ctx` command, first run ("
                    + ("reads the Feather file, writes the rank cache beside it)" if cached
                       else "no rank cache: the database is under 16 MiB, every run reads the Feather file)"),
                    first, command_rows, command_regulons))
    results.append(("flashscenic `ctx` command, later runs" + (" (maps the rank cache)" if cached else ""), later,
                    command_rows, command_regulons))
    for compat in (0, 1):
        out = workdir / f"flashscenic_api_{compat}_reg.csv"
        cmd = ctx_runner(sys.executable, "flashscenic", paths, out, compat=compat)
        r = best_of([run_process(cmd, workdir, f"flashscenic run_ctx, compat={compat}") for _ in range(repeats)])
        versions.setdefault("ours", r["versions"])
        label = "pyscenic_compat_leading_edge=True" if compat else "default leading edges (bug #635 fixed)"
        results.append((f"flashscenic `steps.run_ctx` in a script (the kernel), {label}", r, *ours(out)))
        if not compat:
            kernel, default_regulons = r, results[-1][3]

    if scenic_rs_python:
        out = workdir / "scenic_rs.json"
        cmd = ctx_runner(scenic_rs_python, "scenic-rs", paths, out)
        rs = best_of([run_process(cmd, workdir, "scenic-rs ctx") for _ in range(repeats)])
        versions["scenic-rs"] = rs["versions"]
        regulons = {name: set(reg["genes"]) for name, reg in json.loads(out.read_text()).items()}
        results.append(("scenic-rs 0.3.0 `ctx(...)` with its defaults (pySCENIC's), in a script", rs, None, regulons))

    rows, summary = [], []
    for label, r, mine, regulons in results:
        checks = []
        if mine is not None and ref_rows is not None and mine is not ref_rows:
            checks.append(compare_motif_rows(mine, ref_rows))
        if ref_regulons is not None and regulons is not ref_regulons:
            checks.append(compare_regulons(regulons, ref_regulons, "pySCENIC"))
        if label.startswith("scenic-rs"):
            checks.append(compare_regulons(regulons, default_regulons, "flashscenic (default leading edges)"))
        memory = f"{r['tree_peak_mib']:,.0f}"
        call = "—" if not r.get("call_seconds") else number(r["call_seconds"])
        load = "—" if not r.get("load_seconds") else number(r["load_seconds"])
        rows.append([case, label, str(r["repeats"]), number(r["process_seconds"]), call, load,
                     f"{len(regulons)}", "; ".join(checks) or "—", memory])

    def over_ours(seconds: float) -> str:
        return (f"{number(seconds / later['process_seconds'])}x against its later runs, "
                f"{number(seconds / first['process_seconds'])}x against its first run")

    if rs:
        summary.append(f"flashscenic ctx / scenic-rs ctx whole command: scenic-rs time / flashscenic time = "
                       f"{over_ours(rs['process_seconds'])} (goal: flashscenic faster, > 1x); the call alone "
                       f"(scenic-rs RankingDb + ctx / flashscenic run_ctx): {number(rs['call_seconds'] / kernel['call_seconds'])}x.")
    if py:
        summary.append(f"pySCENIC ctx / flashscenic ctx whole command: {over_ours(py['process_seconds'])}"
                       + (f"; pySCENIC / scenic-rs whole command: {number(py['process_seconds'] / rs['process_seconds'])}x"
                          if rs else "") + ".")
    return rows, versions, summary


def per_module(report: dict) -> float:
    return report["seconds"] / report["n_modules"]


def prune_row(case: str, label: str, r: dict, refs: dict | None, check: str) -> list:
    """Table cells; the speed-up is reference time per module / this row's time per module."""
    speedup = ", ".join(f"{number(per_module(ref) / per_module(r))}x vs {workers} process{'es' if workers > 1 else ''}"
                        for workers, ref in (refs or {}).items()) or "—"
    if refs and len(refs) == 1:
        speedup = speedup.split(" vs ")[0]
    memory = f"{r['peak_mib']:,.0f}"
    if r["children_peak_mib"]:
        memory += f" (largest worker: {r['children_peak_mib']:,.0f})"
    return [case, label, str(r["n_modules"]), number(r["seconds"]), number(per_module(r) * 1000),
            "—" if r["load_seconds"] is None else number(r["load_seconds"]),
            speedup, check, memory, f"{r['peak_mib'] - r['baseline_mib']:,.0f}"]


def number(x: float) -> str:
    """3 significant digits, without exponents for the large numbers."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def markdown(rows, read_rows, versions, summary, info, command, repeats, before) -> str:
    header = ["case", "implementation", "modules timed", "seconds", "ms / module", "load (s)",
              "speed-up per module", "same results as the reference?", "peak RSS (MiB)", "peak over input (MiB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    reading = []
    if read_rows:
        read_header = ["case", "implementation", "seconds", "peak RSS (MiB)", "peak over RSS before (MiB)",
                       "that / file size"]
        reading = ["Reading a ranking database (the file was just written, so it is in the page cache for both; one "
                   "run each, in a fresh process; peak over the RSS before the read, divided by the file size):", "",
                   "| " + " | ".join(read_header) + " |", "|" + "---|" * len(read_header),
                   *["| " + " | ".join(row) + " |" for row in read_rows], ""]
    ours, ref = versions.get("ours", {}), versions.get("reference") or versions.get("loop_reference")
    refs = "not run (no --ref-python)" if not ref else (
        ("" if "pyscenic" not in ref else f"pySCENIC {ref['pyscenic']}, ")
        + f"ctxcore {ref['ctxcore']} (their own venv: numpy {ref['numpy']}, pandas {ref['pandas']})")
    return "\n".join([
        "## cisTarget pruning",
        "",
        f"Measured {datetime.date.today().isoformat()} on {info['cpu']}, {info['cores']} cores, "
        f"{info['ram_gib']:.0f} GiB RAM (1-minute load average {info['load']:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end); Python {info['python']}, torch {ours.get('torch')} "
        f"({ours.get('torch_threads')} threads), numpy {ours.get('numpy')}, flashscenic {ours.get('flashscenic')}. "
        f"References: {refs}.",
        "",
        f"Command: `{command}`",
        "",
        "CPU only, rank_threshold=5000, auc_threshold=0.05, nes_threshold=3.0, unweighted recovery (pySCENIC's "
        f"default), seed={SEED}. Synthetic data: int16 rank permutations; modules with the TF first (weight 1.0) and "
        "GRN weights uniform in (0.01, 10); for each module a third of its genes planted near the top of "
        f"{PLANTED_MOTIFS} motifs' rankings; a motif2tf table annotating {ANNOTATED_FRACTION:.0%} of the motifs to each "
        "TF plus most of its planted motifs, q-values drawn from "
        f"{', '.join(map(str, Q_VALUES))} (a third of the rows fail the 0.001 filter). "
        "Seconds: the pruning only, reading the annotation table included (pySCENIC: `load_motif_annotations` then "
        "`transform.module2df` with `module2features_auc1st_impl` per module, on an in-memory ctxcore "
        "database, which spares it the per-module Feather reads of a real run; flashscenic: `load_annotations` then "
        "`motif_table`). Load: building the database object from the rank matrix, timed apart (flashscenic: "
        "`load_from_tensor`, which validates every motif's permutation). Every row runs in a fresh process after an "
        "untimed warm-up on 3 modules and builds its database afresh, so no cache carries over "
        f"(flashscenic: best of {repeats}; references: one run). pySCENIC with 2 processes is the modules split in "
        "two halves over two forked workers, which is what `prune2df(num_workers=2)` amounts to; the workers share "
        "the database copy-on-write, their peaks are listed but not added. Peak RSS and peak over input as in the "
        "AUCell section. The speed-up is the reference's time per module over ours (ours always runs all modules). "
        "Results are compared on the modules the reference ran: flashscenic's rows must equal pySCENIC's with "
        "`pyscenic_compat_leading_edge=True` (pySCENIC bug #635); the per-module rows (`prune_single_module` "
        "called once a module, `prune_batch` once for all of them, neither with annotations) compare with ctxcore's "
        "leading edges from each motif's own curve. `prune_single_module` runs twice: as its documentation shows, on "
        "a motifs x genes int16 tensor with tensor gene indices (a new tensor for every timed call, so the "
        "gene-major copy it makes on the second call is timed), and on a `RankingDatabase` (gene-major already)."
        + ("" if not before else " Rows marked \"before\" ran the same script with the flashscenic package "
           f"of {before} first on PYTHONPATH, in the same run."),
        "",
        *lines,
        "",
        *reading,
        *[line + "\n" for line in summary],
    ])


def ctx_markdown(rows, versions, summary, info, command, sizes) -> str:
    header = ["case", "implementation", "runs (best of)", "whole process (s)", "the call (s)", "of which database load (s)",
              "regulons", "same results as pySCENIC?", "peak RSS (MiB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    ours, ref, rs = versions.get("ours", {}), versions.get("reference"), versions.get("scenic-rs")
    refs = "pySCENIC not run (no --ref-python)" if not ref else (
        f"pySCENIC {ref['pyscenic']}, ctxcore {ref['ctxcore']} (their own venv: pandas {ref['pandas']})")
    refs += (f"; scenic-rs {rs['scenic-rs']} (its own venv: numpy {rs['numpy']}, pandas {rs['pandas']}; "
             f"RAYON_NUM_THREADS {rs['rayon_threads']})" if rs else "; scenic-rs not run (no --scenic-rs-python)")
    n_motifs, n_db_genes, n_cells, n_genes, n_tfs, n_background = sizes
    return "\n".join([
        "## ctx from adjacencies (flashscenic ctx vs scenic-rs vs pySCENIC)",
        "",
        f"Measured {datetime.date.today().isoformat()} on {info['cpu']}, {info['cores']} cores, "
        f"{info['ram_gib']:.0f} GiB RAM (1-minute load average {info['load']:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end); Python {info['python']}, torch {ours.get('torch')} "
        f"({ours.get('torch_threads')} threads), flashscenic {ours.get('flashscenic')}. References: {refs}.",
        "",
        f"Command: `{command}`",
        "",
        "CPU only. The same four files for every row: pySCENIC's adjacencies TSV (TF, target, importance), the "
        "expression as a CSV of counts (cells x genes), one uncompressed Feather ranking database of cisTarget's "
        "layout, and a motif2tf .tbl. Synthetic, seed "
        f"{SEED} (`make_ctx_case`): {n_tfs} TFs with {CTX_TARGETS[0]}-{CTX_TARGETS[1]} planted targets each (importance "
        f"log-normal(1, 0.5)) plus {n_background} random background links each (log-normal(-1.5, 1)); expression "
        "Poisson counts whose log-means share a standard-normal activity per TF and cell (loading 1 on the TF, "
        "0.3-0.8 on its targets), so the modules are activating; the database's genes a superset of the expression's, "
        f"half of each TF's targets planted near the top of {PLANTED_MOTIFS} motifs' rankings; the annotation as in "
        "the pruning section. Parameters: pySCENIC's ctx defaults everywhere (module thresholds weight>75% and >90%, "
        "top50, top5/10/50perTarget, min_genes 20, rho 0.03 without dropout masking, activating modules only; "
        "rank_threshold 5000, auc_threshold 0.05, nes_threshold 3.0, motif similarity FDR 0.001, orthologous "
        "identity 0); flashscenic needs `--module-percentile-thresholds 75 90` for that (its own default is 75 "
        "alone), scenic-rs's defaults are these. Every run is a fresh process: \"whole process\" is its wall time "
        "from start to exit (start-up, imports, reading every input, writing the result); \"the call\": pySCENIC "
        "`cli.main(argv)` (the command itself, np.object lent for its import under numpy 2), flashscenic "
        "`steps.run_ctx(adjacencies, [database], annotation, reg.csv, expression=AnnData)` on inputs read before, "
        "scenic-rs `RankingDb(path)` + `ctx(adjacencies, X, genes, [db], tbl)` on a pandas frame and a float32 "
        "matrix read before (its database load given apart). flashscenic reads a database through its rank cache: "
        "the first run reads the Feather file and writes a memory-mappable copy beside it, later runs map that; "
        "the run_ctx rows come after the cache was made. pySCENIC and scenic-rs read the Feather file every run. "
        "The files were just written, so they are in the page cache for every row. pySCENIC's workers each load "
        "the database. Peak RSS: the largest resident set of the process and of the children it waited for "
        "(`wait4`), not their sum. flashscenic's rows are best of the runs listed (pySCENIC: one run); the peak is "
        "the largest over them. The `flashscenic ctx` command has no option for pySCENIC's leading edges (bug #635, "
        "a motif's TargetGenes taken from another motif's curve): its rows and run_ctx's default row have their own "
        "curve's leading edges, so some TargetGenes differ from pySCENIC's by design; the run_ctx row with "
        "`pyscenic_compat_leading_edge=True` (the pruner's flag, set for the script) must match pySCENIC. Rows are "
        "compared per (TF, MotifID, module Context, database); regulons are pySCENIC's `df2regulons` of its "
        "reg.csv (run in its venv), flashscenic's regulons of its reg.csv by the same rules (`regulons_from_motifs`), "
        "scenic-rs's as it returns them (its leading edges, like flashscenic's default, from each motif's own curve).",
        "",
        *lines,
        "",
        *[line + "\n" for line in summary],
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-python", help="python of the reference venv (pyscenic 0.12.1, ctxcore 0.2.0); "
                        "references are skipped when absent")
    parser.add_argument("--ctx", action="store_true", help="instead of the pruning section: the ctx section, "
                        "adjacencies to regulons as whole commands (flashscenic ctx, scenic-rs, pyscenic ctx)")
    parser.add_argument("--scenic-rs-python", help="python of a venv with scenic-rs 0.3.0 (--ctx); skipped when absent")
    parser.add_argument("--shapes", default="full,small", help="comma-separated pruning shapes among full "
                        "(5,000 motifs x 20,000 genes, 500 modules) and small (1,500 x 12,000, 150 modules); "
                        "default both")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--per-module-only", action="store_true", help="only the per-module rows (ctxcore's loop, "
                        "prune_single_module, prune_batch, motif_table): no pySCENIC, no Feather reading")
    parser.add_argument("--before", type=Path, help="a directory holding another flashscenic package (e.g. an "
                        "exported older commit): flashscenic's rows run with it too, for before/after ratios")
    parser.add_argument("--before-label", help="how the rows name --before (default: its path)")
    parser.add_argument("--repeats", type=int, default=3, help="flashscenic (and --ctx: scenic-rs) timings: best of "
                        "this many")
    parser.add_argument("--reference-modules", type=int, help="time pySCENIC's module2df on a fixed random subset "
                        "of this many modules (default: 100 of 500 at full size, all of the small shape; "
                        "--quick: 12 of 24)")
    parser.add_argument("--out", type=Path, help="markdown file whose '## cisTarget pruning' section (with --ctx: "
                        "'## ctx from adjacencies ...') to write or replace")
    args = parser.parse_args()

    shapes = ["quick"] if args.quick else [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in ("full", "small")] if not args.quick else []
    if unknown or not shapes:
        parser.error(f"--shapes must list full and/or small, got {args.shapes!r}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.reference_modules is not None and args.reference_modules < 1:
        parser.error(f"--reference-modules must be at least 1, got {args.reference_modules}")
    if args.before is not None and not (args.before / "flashscenic" / "__init__.py").is_file():
        parser.error(f"--before {str(args.before)!r} holds no flashscenic package (no flashscenic/__init__.py)")
    before_label = args.before_label or str(args.before)

    ref_python = optional_python(args.ref_python, "--ref-python", "pySCENIC and ctxcore")

    command = command_line()
    (HERE / "_work").mkdir(exist_ok=True)
    info = machine()
    if args.ctx:
        scenic_rs_python = optional_python(args.scenic_rs_python, "--scenic-rs-python", "scenic-rs")
        sizes = CTX_SHAPES["quick" if args.quick else "full"]
        with tempfile.TemporaryDirectory(dir=HERE / "_work") as tmp:
            rows, versions, summary = ctx_rows(sizes, ref_python, scenic_rs_python, args.repeats, Path(tmp))
        section = ctx_markdown(rows, versions, summary, info, command, sizes)
        print("\n" + section)
        if args.out:
            write_section(args.out, section)
            print(f"wrote the ctx section of {args.out}")
        return
    rows, read, versions, summary = [], [], {}, []
    with tempfile.TemporaryDirectory(dir=HERE / "_work") as tmp:
        for shape in shapes:
            sizes = SHAPES[shape]
            if args.reference_modules:
                sizes = (*sizes[:5], args.reference_modules)
            shape_rows, shape_versions, shape_summary = prune_rows(
                sizes, ref_python, args.repeats, Path(tmp), args.per_module_only, args.before, before_label)
            rows += shape_rows
            summary += shape_summary
            for key, value in shape_versions.items():
                versions.setdefault(key, value)
        if not args.per_module_only:
            read, read_summary = read_rows(FEATHER["quick" if args.quick else "full"], ref_python, Path(tmp))
            summary += read_summary

    section = markdown(rows, read, versions, summary, info, command, args.repeats, before_label if args.before else None)
    print("\n" + section)
    if args.out:
        write_section(args.out, section)
        print(f"wrote the cisTarget pruning section of {args.out}")


if __name__ == "__main__":
    main()
