"""The HTML report: figures embedded as PNG, labels found where they are stored, notes instead of crashes,
text escaped, and (where Chromium is installed) a headless-browser screenshot that is not blank."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flashscenic.errors import InputError, MissingFileError
from flashscenic.regulons import MOTIF_COLUMNS
from flashscenic.report import write_report
from flashscenic.store import create_results_store, ingest_expression, open_results_store

TYPES = ["B cell", "T cell", "Monocyte"]
N_PER_TYPE = 30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def regulon_dicts(names):
    rng = np.random.default_rng(1)
    regulons = []
    for i, name in enumerate(names):
        genes = [f"G{g}" for g in rng.choice(200, size=int(rng.integers(10, 120)), replace=False)]
        regulons.append({"name": name, "genes": genes, "weights": [1.0] * len(genes), "score": 3.0 + i / 10,
                         "motifs": [f"m{i}"]})
    return regulons


def motif_table(n_rows=40):
    rng = np.random.default_rng(2)
    return pd.DataFrame({
        "TF": [f"Tf{i % 6}" for i in range(n_rows)],
        "MotifID": [f"motif{i}" for i in range(n_rows)],
        "AUC": rng.uniform(0.05, 0.2, n_rows),
        "NES": rng.uniform(3.0, 9.0, n_rows),
        "MotifSimilarityQvalue": np.zeros(n_rows),
        "OrthologousIdentity": np.ones(n_rows),
        "Annotation": ["gene is directly annotated"] * n_rows,
        "Context": [frozenset({"top50", "activating", "db1"})] * n_rows,
        "TargetGenes": [[("G1", 1.0), ("G2", 0.5)]] * n_rows,
        "RankAtMax": rng.integers(10, 500, n_rows),
        "Database": ["db1"] * n_rows,
    }, columns=list(MOTIF_COLUMNS))


def make_store(folder: Path, *, names=None, labels=True, motifs=True, timings=True, auc=True):
    """A small results store: 90 cells of 3 types, regulons each active in one type."""
    names = names or [f"Tf{i}(+)" for i in range(8)] + ["Tf9(-)"]
    cells = [f"cell{i}" for i in range(N_PER_TYPE * len(TYPES))]
    store = create_results_store(folder / "results.zarr", cell_names=cells, chunk_rows=40,
                                 parameters={"pruning_nes_threshold": 3.0, "module_k": 50, "seed": 0})
    store.write_regulons(regulon_dicts(names), gene_names=[f"G{g}" for g in range(200)])
    if motifs:
        store.write_motifs(motif_table())
    if auc:
        rng = np.random.default_rng(3)
        codes = np.repeat(np.arange(len(TYPES)), N_PER_TYPE)
        values = rng.uniform(0, 0.05, (len(cells), len(names)))
        for j in range(len(names)):
            values[codes == j % len(TYPES), j] += 0.2 + 0.02 * j
        store.write_auc(values.astype(np.float32), names)
    if labels:
        store.write_cell_labels(pd.DataFrame({"cell_type": pd.Categorical(np.repeat(TYPES, N_PER_TYPE),
                                                                           categories=TYPES)}))
    if timings:
        for stage, seconds in (("grn", 12.5), ("modules", 0.8), ("pruning", 95.0), ("auc", 3.2), ("rss", 0.05)):
            store.record_timing(stage, seconds)
    return store


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))


def images(text: str) -> list[dict]:
    parser = _Images()
    parser.feed(text)
    return parser.images


def decode_png(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data.startswith(PNG_MAGIC)
    return data


def assert_png_decodes(data: bytes) -> np.ndarray:
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    return pixels


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report_full")
    store = make_store(folder)
    path = write_report(store, folder / "report.html", top_n=2)
    return store, path, path.read_text(encoding="utf-8")


def test_report_has_one_decodable_png_per_figure(full_report):
    _, _, text = full_report
    found = images(text)
    ids = re.findall(r'<figure id="figure-([a-z]+)">', text)
    assert ids == ["rss", "auc", "sizes", "nes", "timings"]
    assert len(found) == 5
    for image in found:
        assert image["alt"]  # alt text on every figure
        assert_png_decodes(decode_png(image["src"]))
    assert 'class="note"' not in text  # nothing is missing in a full store


def test_report_is_self_contained(full_report):
    _, _, text = full_report
    assert "<script" not in text.lower()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', text)
    assert "<link" not in text.lower()
    assert "Content-Security-Policy" in text


def test_report_summary_and_top_regulon_table(full_report):
    store, _, text = full_report
    assert "Run summary" in text and "90" in text
    assert str(store.path.resolve()) in text
    assert "column &#x27;cell_type&#x27; of the results store&#x27;s cells table" in text
    # Tf0, Tf3, Tf6 are active in B cells: the two with the highest AUC excess are the most specific
    row = re.search(r"<tr><td>B cell</td><td>30</td><td>([^<]*)</td></tr>", text)
    assert row and row.group(1).startswith("Tf6(+)") and "Tf3(+)" in row.group(1)
    for stage in ("grn", "modules", "pruning", "auc", "rss"):
        assert f"<td>{stage}</td>" in text
    assert "pruning_nes_threshold" in text and "numpy" in text


def test_cell_type_order(full_report, tmp_path):
    store, _, text = full_report
    assert re.findall(r"<tr><td>([^<]+)</td><td>30</td>", text) == TYPES  # stored categorical: its order
    labels = pd.Categorical(np.repeat(TYPES, N_PER_TYPE), categories=TYPES[::-1])
    text = write_report(store, tmp_path / "r.html", cell_types=labels).read_text()
    assert re.findall(r"<tr><td>([^<]+)</td><td>30</td>", text) == TYPES[::-1]  # the categories' order
    text = write_report(store, tmp_path / "r.html", cell_types=np.repeat(TYPES, N_PER_TYPE)).read_text()
    assert re.findall(r"<tr><td>([^<]+)</td><td>30</td>", text) == sorted(TYPES)  # plain text: sorted
    text = write_report(store, tmp_path / "r.html", cell_types=np.repeat(["t10", "t9", "t1"], 30)).read_text()
    assert re.findall(r"<tr><td>([^<]+)</td><td>30</td>", text) == ["t1", "t9", "t10"]  # natural order


def test_big_heatmaps_are_capped_but_keep_every_type(tmp_path, monkeypatch):
    from flashscenic import report

    monkeypatch.setattr(report, "_MAX_TYPES", 2)
    monkeypatch.setattr(report, "_MAX_REGULON_COLUMNS", 4)
    store = make_store(tmp_path, labels=False, motifs=False, timings=False)
    sizes = np.repeat(["small", "big", "mid"], [10, 50, 30])
    labels = pd.Categorical(sizes, categories=["small", "mid", "big"])
    text = write_report(store, tmp_path / "r.html", cell_types=labels, top_n=3).read_text()
    assert "show the 2 largest of the 3 cell types" in text
    assert "the heatmaps show the top 2 regulon(s) of each cell type instead of 3" in text
    assert "2 cell types (rows) x 4 regulons (columns)" in text
    assert re.findall(r"<tr><td>(small|mid|big)</td><td>", text) == ["small", "mid", "big"]  # the table: all


def test_a_run_without_regulons(tmp_path):
    store = make_store(tmp_path, names=["Tf0(+)"], motifs=False, timings=False, labels=True)
    store.write_auc(np.zeros((store.n_cells, 0), np.float32), [])
    text = write_report(store, tmp_path / "r.html").read_text()
    assert text.count("The run scored no regulons") == 2


def test_default_path_is_beside_the_store_and_path_accepted(tmp_path):
    store = make_store(tmp_path, motifs=False, timings=False)
    path = write_report(str(store.path))
    assert path == tmp_path.resolve() / "report.html" and path.is_file()


def test_labels_given_win_and_series_align_by_cell_name(tmp_path):
    store = make_store(tmp_path, motifs=False, timings=False)
    cells = list(store.cell_names)
    given = pd.Series(["x" if i % 2 else "y" for i in range(len(cells))], index=cells)
    text = write_report(store, tmp_path / "a.html", cell_types=given[::-1]).read_text()  # reversed: by name
    assert "labels given to write_report" in text
    assert re.search(r"<tr><td>x</td><td>45</td>", text) and re.search(r"<tr><td>y</td><td>45</td>", text)
    text = write_report(store, tmp_path / "b.html", cell_types=np.repeat(["p", "q", "r"], 30)).read_text()
    assert re.search(r"<tr><td>q</td><td>30</td>", text)


def test_labels_from_the_expression_store_obs(tmp_path):
    rng = np.random.default_rng(0)
    cells = [f"c{i}" for i in range(60)]
    import anndata

    adata = anndata.AnnData(rng.random((60, 5)).astype(np.float32),
                            obs=pd.DataFrame({"depth": rng.random(60), "louvain": np.repeat(["k1", "k2"], 30)},
                                             index=cells),
                            var=pd.DataFrame(index=[f"G{i}" for i in range(5)]))
    expression = ingest_expression(adata, tmp_path / "expression.zarr", obs_columns=["depth", "louvain"])
    store = create_results_store(tmp_path / "results.zarr", expression=expression)
    store.write_auc(rng.random((60, 3)), ["A(+)", "B(+)", "C(+)"])
    text = write_report(store, tmp_path / "r.html").read_text()  # float 'depth' skipped
    assert "obs column &#x27;louvain&#x27; of the expression store" in text
    assert re.search(r"<tr><td>k2</td><td>30</td>", text)
    text = write_report(store, tmp_path / "r.html", cell_type_column="louvain").read_text()
    assert "obs column &#x27;louvain&#x27;" in text
    with pytest.raises(InputError, match="no cell-label column 'tissue'.*louvain"):
        write_report(store, tmp_path / "r.html", cell_type_column="tissue")


def test_missing_labels_and_missing_sections_become_notes(tmp_path):
    store = make_store(tmp_path, labels=False, motifs=False, timings=False)
    text = write_report(store, tmp_path / "r.html").read_text()
    assert text.count("No cell-type labels were found") == 2
    assert "no motif table" in text and "No stage timings" in text
    assert re.findall(r'<figure id="figure-([a-z]+)">', text) == ["sizes"]


def test_cells_without_a_label_are_left_out(tmp_path):
    store = make_store(tmp_path, labels=False, motifs=False, timings=False)
    labels = np.repeat(TYPES, N_PER_TYPE).astype(object)
    labels[:5] = None
    text = write_report(store, tmp_path / "r.html", cell_types=labels).read_text()
    assert "5 cells without a label are left out" in text
    assert re.search(r"<tr><td>B cell</td><td>25</td>", text)
    text = write_report(store, tmp_path / "r.html", cell_types=[None] * store.n_cells).read_text()
    assert "Every cell&#x27;s label is missing" in text


def test_text_is_escaped(tmp_path):
    evil = '<script>alert("x")</script>(+)'
    store = make_store(tmp_path, names=[evil, "$a$b(+)", "Tf2(+)"], timings=False)
    store.record_timing("<b>stage</b>", 1.0)
    text = write_report(store, tmp_path / "r.html", title="<i>run</i> & co",
                        cell_types=np.repeat(["<img src=x>", "T", "M"], 30)).read_text()
    assert "<script" not in text and "<img src=x>" not in text and "<i>run" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;(+)" in text
    assert "&lt;i&gt;run&lt;/i&gt; &amp; co" in text and "&lt;b&gt;stage&lt;/b&gt;" in text
    assert len(images(text)) == 5  # mathtext-looking names ($a$b) still draw


def test_errors(tmp_path):
    store = make_store(tmp_path, auc=False, labels=False)
    with pytest.raises(InputError, match="no AUC"):
        write_report(store, tmp_path / "r.html")
    (tmp_path / "full").mkdir()
    store = make_store(tmp_path / "full")
    with pytest.raises(InputError, match="2 labels but the results store has 90 cells"):
        write_report(store, tmp_path / "r.html", cell_types=["a", "b"])
    with pytest.raises(InputError, match="not one string"):
        write_report(store, tmp_path / "r.html", cell_types="cell_type")
    with pytest.raises(InputError, match="index lacks 90 of the 90 cells"):
        write_report(store, tmp_path / "r.html", cell_types=pd.Series(["a"] * 90, index=[f"z{i}" for i in range(90)]))
    with pytest.raises(InputError, match="not both"):
        write_report(store, tmp_path / "r.html", cell_types=["a"] * 90, cell_type_column="cell_type")
    with pytest.raises(InputError, match="top_n"):
        write_report(store, tmp_path / "r.html", top_n=0)
    with pytest.raises(MissingFileError, match="does not exist"):
        write_report(store, tmp_path / "nowhere" / "r.html")
    with pytest.raises(InputError, match="is a folder"):
        write_report(store, tmp_path)
    with pytest.raises(MissingFileError):
        write_report(tmp_path / "absent.zarr")
    assert not list(tmp_path.glob(".r.html.partial-*"))


def test_user_backend_and_rcparams_untouched(tmp_path):
    import matplotlib

    store = make_store(tmp_path, motifs=False)
    backend, style = matplotlib.rcParams["backend"], matplotlib.rcParams["font.size"]
    with matplotlib.rc_context({"font.size": 23.0}):
        write_report(open_results_store(store.path), tmp_path / "r.html")
        assert matplotlib.rcParams["font.size"] == 23.0
    assert matplotlib.rcParams["backend"] == backend and matplotlib.rcParams["font.size"] == style


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium/Chrome binary on PATH (apt-get install chromium)")
def test_report_renders_in_headless_chromium(full_report, tmp_path):
    _, path, text = full_report
    for image in images(text):  # every embedded figure is a PNG that decodes
        assert_png_decodes(decode_png(image["src"]))
    screenshot = tmp_path / "report.png"
    width, height = 1200, 2400
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
               f"--window-size={width},{height}", f"--screenshot={screenshot}", path.resolve().as_uri()]
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), f"no screenshot (rc {done.returncode}): {done.stderr[-2000:]}"
    print(f"headless Chromium screenshot in {time.perf_counter() - start:.1f} s")
    pixels = assert_png_decodes(screenshot.read_bytes())
    assert pixels.shape[:2] == (height, width)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05  # not blank
    packed = (rgb.reshape(-1, 3) * 255).round().astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
    assert np.unique(packed).size > 200  # the heatmaps' colour maps, text, backgrounds
    # the header bar (dark blue) is painted at the top: the page's CSS was applied
    assert np.allclose(rgb[10, width // 2], [0x1F / 255, 0x3B / 255, 0x57 / 255], atol=0.05)


def test_the_runs_stored_rss_and_label_column_are_shown_by_default(tmp_path, monkeypatch):
    store = make_store(tmp_path, motifs=False, timings=False)
    clusters = np.where(np.arange(store.n_cells) % 2, "k2", "k1")
    store.write_cell_labels(pd.DataFrame({"cluster": clusters}))  # a second label column, after 'cell_type'
    names = store.regulon_names
    rss = pd.DataFrame(0.125, index=pd.Index(["k1", "k2"], name="cell_type"), columns=names)
    rss.loc["k1", "Tf4(+)"], rss.loc["k2", "Tf7(+)"] = 0.987, 0.876  # numbers no computation gives here
    store.write_table("rss", rss.reset_index())
    store.mark_complete("rss", cell_type_column="cluster")

    from flashscenic import rss as rss_module

    monkeypatch.setattr(rss_module, "regulon_specificity_scores",
                        lambda *a, **k: pytest.fail("the report recomputed the RSS the run stored"))
    for text in (write_report(store, tmp_path / "a.html", top_n=2).read_text(),
                 write_report(store, tmp_path / "b.html", top_n=2, cell_type_column="cluster").read_text()):
        assert re.findall(r"<tr><td>(k1|k2)</td><td>45</td>", text) == ["k1", "k2"]
        assert re.search(r"<tr><td>k1</td><td>45</td><td>Tf4\(\+\) \(0\.987\), [^<]*\(0\.125\)</td>", text)
        assert re.search(r"<tr><td>k2</td><td>45</td><td>Tf7\(\+\) \(0\.876\)", text)
        assert "column &#x27;cluster&#x27; of the results store&#x27;s cells table; the RSS the run stored." in text
    monkeypatch.undo()
    text = write_report(store, tmp_path / "c.html", top_n=2, cell_type_column="cell_type").read_text()
    assert re.findall(r"<tr><td>([^<]+)</td><td>30</td>", text) == TYPES  # another column: computed
    assert "0.987" not in text and "the RSS the run stored" not in text
    text = write_report(store, tmp_path / "d.html", cell_types=clusters).read_text()  # given labels: computed
    assert re.findall(r"<tr><td>(k1|k2)</td><td>45</td>", text) == ["k1", "k2"] and "0.987" not in text


def test_the_report_uses_rss_by_label(tmp_path, monkeypatch):
    from flashscenic import rss as rss_module

    store = make_store(tmp_path, motifs=False, timings=False)
    calls = []
    real = rss_module.rss_by_label
    monkeypatch.setattr(rss_module, "rss_by_label", lambda auc, labels: calls.append(labels) or real(auc, labels))
    write_report(store, tmp_path / "r.html")
    assert len(calls) == 1 and len(calls[0]) == store.n_cells


def test_a_report_write_failing_midway_leaves_the_previous_report(tmp_path, monkeypatch):
    store = make_store(tmp_path, motifs=False, timings=False)
    path = write_report(store, tmp_path / "r.html")
    before = path.read_bytes()
    real = Path.write_text

    def write_text(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OSError, match="No space left"):
        write_report(store, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "results.zarr"]  # no partial file
