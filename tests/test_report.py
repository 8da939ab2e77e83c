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
    assert ids == ["embedding", "auc", "binary", "rss", "sizes", "nes", "timings"]
    assert len(found) == 7
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
    assert re.findall(r'<figure id="figure-([a-z]+)">', text) == ["embedding", "binary", "sizes"]
    assert "not coloured: the cells have no labels" in text and "the cells have no labels. A regulon is on" in text


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
    assert len(images(text)) == 7  # mathtext-looking names ($a$b) still draw


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


def _run_chromium(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with a fresh profile, its console logged to stderr, no network of its own."""
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / ('profile-' + name)}",
               "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def _console(stderr: str) -> list[str]:
    """The page's console messages (JavaScript errors, Content-Security-Policy refusals) in Chromium's log."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


# Records every error event (a script error, an image that fails to load) from the first line of the page
# on, and once the page has loaded writes what it found into the DOM for --dump-dom.
_PROBE_HEAD = ("<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push("
               "e.message||('failed to load a '+(e.target&&e.target.tagName)));},true);</script>")
_PROBE_TAIL = ("<script>window.addEventListener('load',function(){var all=[].slice.call(document.images);"
               "var broken=all.filter(function(i){return !(i.complete&&i.naturalWidth>0&&i.naturalHeight>0);});"
               "var out=document.createElement('pre');out.textContent='PROBE images='+all.length+' broken='+"
               "broken.length+' errors='+window.__errors.length+' ['+window.__errors.join('|')+']';"
               "document.body.appendChild(out);});</script>")


def _probe(text: str, tmp_path: Path, name: str) -> tuple[dict, list[str]]:
    """Load the page with the probe (its CSP let through inline scripts only) and read the probe's counts."""
    csp = "default-src 'none';"
    assert text.count(csp) == 1 and text.count("<head>") == 1 and text.count("</body>") == 1
    page = tmp_path / f"{name}.html"
    page.write_text(text.replace(csp, csp + " script-src 'unsafe-inline';").replace("<head>", "<head>" + _PROBE_HEAD)
                    .replace("</body>", _PROBE_TAIL + "</body>"), encoding="utf-8")
    done = _run_chromium(tmp_path, name, "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri())
    found = re.search(r"PROBE images=(\d+) broken=(\d+) errors=(\d+) \[([^\]]*)\]", done.stdout)
    assert found, f"the probe did not report (rc {done.returncode}): {done.stderr[-2000:]}"
    counts = {"images": int(found.group(1)), "broken": int(found.group(2)), "errors": int(found.group(3)),
              "messages": found.group(4)}
    return counts, _console(done.stderr)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium/Chrome binary on PATH (apt-get install chromium)")
def test_report_renders_in_headless_chromium(full_report, tmp_path):
    _, path, text = full_report
    for image in images(text):  # every embedded figure is a PNG that decodes
        assert_png_decodes(decode_png(image["src"]))
    screenshot = tmp_path / "report.png"
    width, height = 1200, 2400
    start = time.perf_counter()
    done = _run_chromium(tmp_path, "screenshot", f"--window-size={width},{height}", f"--screenshot={screenshot}",
                         path.resolve().as_uri())
    assert screenshot.is_file(), f"no screenshot (rc {done.returncode}): {done.stderr[-2000:]}"
    print(f"headless Chromium screenshot in {time.perf_counter() - start:.1f} s")
    assert _console(done.stderr) == []  # the report itself: no script error, nothing its CSP refused
    pixels = assert_png_decodes(screenshot.read_bytes())
    assert pixels.shape[:2] == (height, width)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05  # not blank
    packed = (rgb.reshape(-1, 3) * 255).round().astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
    assert np.unique(packed).size > 200  # the heatmaps' colour maps, text, backgrounds
    # the header bar (dark blue) is painted at the top: the page's CSS was applied
    assert np.allclose(rgb[10, width // 2], [0x1F / 255, 0x3B / 255, 0x57 / 255], atol=0.05)

    # every <img> decoded in the browser (naturalWidth > 0) and no error event fired
    counts, console = _probe(text, tmp_path, "probe")
    assert counts == {"images": len(images(text)), "broken": 0, "errors": 0, "messages": ""}
    assert len(images(text)) == 7 and console == []

    # the same checks fail on a page with a broken image, a script error and a refused external image
    broken = text.replace("base64,iVBOR", "base64,iVBxR", 1).replace(
        "</main>", '<img src="http://127.0.0.1:9/x.png" alt="x"><script>notAFunction();</script></main>')
    counts, console = _probe(broken, tmp_path, "control")
    assert counts["images"] == len(images(text)) + 1 and counts["broken"] == 2
    assert "notAFunction is not defined" in counts["messages"] and counts["errors"] >= 2
    assert any("Uncaught ReferenceError" in line for line in console)
    assert any("Content Security Policy" in line for line in console)


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

    for name in ("regulon_specificity_scores", "rss_table", "rss_by_label", "rss_of_store"):
        monkeypatch.setattr(rss_module, name, lambda *a, **k: pytest.fail("the report recomputed the RSS the run stored"))
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


def test_the_report_computes_the_rss_as_the_run_does(tmp_path, monkeypatch):
    from flashscenic import rss as rss_module
    from flashscenic.rss import rss_by_label

    store = make_store(tmp_path, motifs=False, timings=False)
    calls = []
    real = rss_module.rss_of_store
    monkeypatch.setattr(rss_module, "rss_of_store", lambda results, labels: calls.append(labels) or real(results, labels))
    path = write_report(store, tmp_path / "r.html")
    assert len(calls) == 1 and len(calls[0]) == store.n_cells
    expected = rss_by_label(store.read_auc(as_frame=True), store.read_cells().set_index("cell")["cell_type"])
    assert np.allclose(real(store, calls[0]).loc[TYPES].to_numpy(), expected.loc[TYPES].to_numpy(), rtol=1e-12)
    assert path.is_file()


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


# --- the figures: clustering, binarisation, embedding, subsample, legibility ----------------------


@pytest.fixture
def drawn(monkeypatch):
    """The arguments of every figure drawn (the figures are still drawn)."""
    from flashscenic import report

    calls = []
    for name in ("_heatmap_figure", "_embedding_figure", "_recurrence_figure"):
        def spy(*args, _real=getattr(report, name), _name=name, **kwargs):
            calls.append((_name, args, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(report, name, spy)
    return calls


def heatmaps(calls) -> dict:
    """Heatmap arguments by what they show: {what: (values, row labels, column labels, row tree, column tree)}."""
    return {kwargs["what"]: args for name, args, kwargs in calls if name == "_heatmap_figure"}


def test_heatmaps_are_ordered_by_hierarchical_clustering(tmp_path, drawn):
    from scipy.cluster.hierarchy import leaves_list

    # regulons X* are active in types A and B, Y* in C and D; rows and labels interleave them on purpose
    names = ["X0(+)", "Y0(+)", "X1(+)", "Y1(+)", "X2(+)", "Y2(+)"]
    types = np.repeat(["A", "C", "B", "D"], 20)
    rng = np.random.default_rng(4)
    values = rng.uniform(0.0, 0.03, (80, 6))
    values[np.isin(types, ["A", "B"])[:, None] & np.array([n[0] == "X" for n in names])] += 0.3
    values[np.isin(types, ["C", "D"])[:, None] & np.array([n[0] == "Y" for n in names])] += 0.3
    store = create_results_store(tmp_path / "results.zarr", cell_names=[f"c{i}" for i in range(80)], chunk_rows=30)
    store.write_auc(values.astype(np.float32), names)
    write_report(store, tmp_path / "r.html", cell_types=pd.Categorical(types, categories=["A", "C", "B", "D"]))
    maps = heatmaps(drawn)
    activity, rows, columns, row_tree, column_tree = maps["mean AUC, z-score"]
    assert {frozenset(columns[:2]), frozenset(columns[2:])} == {frozenset("AB"), frozenset("CD")}
    assert {frozenset(rows[:3]), frozenset(rows[3:])} == {frozenset(["X0(+)", "X1(+)", "X2(+)"]),
                                                          frozenset(["Y0(+)", "Y1(+)", "Y2(+)"])}
    # the dendrograms drawn are those of the order shown
    assert rows == [names[i] for i in leaves_list(row_tree)]
    assert columns == [["A", "C", "B", "D"][i] for i in leaves_list(column_tree)]
    # z-scores per regulon over the cell types: each row has mean 0 and standard deviation 1
    assert np.allclose(activity.mean(axis=1), 0, atol=1e-9) and np.allclose(activity.std(axis=1), 1)
    assert activity[rows.index("X0(+)"), columns.index("A")] > 0 > activity[rows.index("X0(+)"), columns.index("C")]
    # the binarised heatmap has the same order; the RSS heatmap's cell types too
    _, binary_rows, binary_columns, _, _ = maps["fraction of cells on"]
    assert binary_rows == rows and binary_columns == columns
    _, rss_rows, rss_columns, _, rss_tree = maps["RSS"]
    assert rss_rows == columns and set(rss_columns) == set(names) and rss_tree is not None


def test_binarised_fractions_are_pyscenic_thresholds_per_cell_type(tmp_path, drawn):
    from flashscenic.binarization import binarize_auc

    store = make_store(tmp_path, motifs=False, timings=False)  # 90 cells: all used, no subsample
    text = write_report(store, tmp_path / "r.html").read_text()
    fraction, rows, columns, _, _ = heatmaps(drawn)["fraction of cells on"]
    binary, _ = binarize_auc(store.read_auc(as_frame=True), seed=0)
    expected = binary.groupby(np.repeat(TYPES, N_PER_TYPE)).mean()
    assert np.array_equal(fraction, expected.loc[columns, rows].to_numpy().T)
    assert 0 < fraction.mean() < 1
    assert "derived from all cells; on-fractions counted over all 90 cells" in text


def test_per_cell_figures_use_a_fixed_seeded_subsample(tmp_path, monkeypatch, drawn):
    from flashscenic import report

    monkeypatch.setattr(report, "_SAMPLE_CELLS", 50)
    monkeypatch.setattr(report, "_BINARIZE_CELLS", 30)
    store = make_store(tmp_path, motifs=False, timings=False)
    first = write_report(store, tmp_path / "a.html").read_text()
    second = write_report(store, tmp_path / "b.html").read_text()
    assert "a random subsample of 50 of the 90 cells (seed 0)" in first
    assert "derived from 30 random cells; on-fractions counted over a random subsample of 50" in first
    figures = dict(re.findall(r'<figure id="figure-([a-z]+)"><img src="([^"]+)"', first))
    again = dict(re.findall(r'<figure id="figure-([a-z]+)"><img src="([^"]+)"', second))
    assert figures["embedding"] == again["embedding"] and figures["binary"] == again["binary"]  # seeded
    coordinates = [args[0] for name, args, _ in drawn if name == "_embedding_figure"]
    assert [c.shape[0] for c in coordinates] == [50, 50]
    rows = report._subsample(90)
    assert rows.size == 50 and np.array_equal(rows, np.unique(rows)) and rows.max() < 90


def test_the_auc_is_read_chunk_by_chunk(tmp_path, monkeypatch):
    from flashscenic import report
    from flashscenic.rss import rss_by_label
    from flashscenic.store import ResultsStore

    store = make_store(tmp_path, motifs=False, timings=False)  # 90 cells in chunks of 40
    labels = store.read_cells().set_index("cell")["cell_type"]
    store.write_table("rss", rss_by_label(store.read_auc(as_frame=True), labels).rename_axis("cell_type").reset_index())
    store.mark_complete("rss", cell_type_column="cell_type")
    full = store.read_auc(as_frame=True)
    monkeypatch.setattr(ResultsStore, "read_auc", lambda *a, **k: pytest.fail("the report read the whole AUC"))
    text = write_report(store, tmp_path / "r.html").read_text()  # the RSS the run stored
    assert len(images(text)) == 5 and "the RSS the run stored" in text  # embedding, activity, binarised, RSS, sizes
    text = write_report(store, tmp_path / "r.html", cell_types=np.repeat(["p", "q", "r"], 30)).read_text()
    assert len(images(text)) == 5 and "the RSS the run stored" not in text  # computed, chunk by chunk too
    scanned = report._scan(store, report._cell_labels(store, None, "cell_type"))
    means = full.groupby(np.repeat(TYPES, N_PER_TYPE)).mean().loc[TYPES]
    assert np.allclose(scanned.means, means.to_numpy(), rtol=1e-6) and list(scanned.counts) == [30, 30, 30]
    assert np.array_equal(scanned.sample, full.to_numpy()) and np.array_equal(scanned.rows, np.arange(90))


def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    from flashscenic import report

    rng = np.random.default_rng(5)
    values = (rng.random((300, 8)) * rng.uniform(0.01, 1.0, 8)).astype(np.float32)
    values[:, 3] = 0.2  # a constant regulon: left at 0, not divided by 0
    scores, explained = report._pca(values, 4)
    x = values.astype(np.float64)
    spread = x.std(axis=0)
    reference = PCA(n_components=4, svd_solver="full").fit((x - x.mean(axis=0)) / np.where(spread > 0, spread, 1))
    expected = reference.transform((x - x.mean(axis=0)) / np.where(spread > 0, spread, 1))
    assert np.allclose(np.abs(scores), np.abs(expected), atol=1e-8)
    assert np.allclose(explained, reference.explained_variance_ratio_)


def embedding_caption(text: str) -> str:
    return re.search(r'<figure id="figure-embedding">.*?<figcaption>(.*?)</figcaption>', text, re.S).group(1)


def test_the_embedding_is_a_umap_of_regulon_activity_coloured_by_cell_type(tmp_path, drawn):
    """umap-learn is installed (the umap extra, in `make install` and the test extra): the report draws a UMAP."""
    store = make_store(tmp_path, motifs=False, timings=False)
    labels = np.repeat(TYPES, N_PER_TYPE).astype(object)
    labels[:4] = None
    text = write_report(store, tmp_path / "r.html", cell_types=labels).read_text()
    (coordinates, axes, groups), = [args for name, args, _ in drawn if name == "_embedding_figure"]
    assert coordinates.shape == (90, 2) and list(axes) == ["UMAP1", "UMAP2"]
    assert embedding_caption(text).startswith("UMAP of the regulon activity")
    assert [(name, int(mask.sum())) for name, mask in groups] == [("B cell", 26), ("Monocyte", 30), ("T cell", 30),
                                                                  ("no label", 4)]  # text labels: sorted
    assert np.array_equal(groups[2][1], np.repeat([False, True, False], N_PER_TYPE))
    centres = np.array([coordinates[mask].mean(axis=0) for _, mask in groups[:3]])
    within = max(np.linalg.norm(coordinates[mask] - centre, axis=1).mean() for (_, mask), centre in
                 zip(groups[:3], centres))
    assert min(np.linalg.norm(centres[a] - centres[b]) for a, b in ((0, 1), (0, 2), (1, 2))) > 2 * within


def test_without_umap_learn_the_embedding_is_a_pca_and_says_so(tmp_path, drawn, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` raises ImportError
    store = make_store(tmp_path, motifs=False, timings=False)
    text = write_report(store, tmp_path / "r.html").read_text()
    (coordinates, axes, _), = [args for name, args, _ in drawn if name == "_embedding_figure"]
    assert coordinates.shape == (90, 4) and [a.split()[0] for a in axes] == ["PC1", "PC2", "PC3", "PC4"]
    shares = [float(a.split("(")[1].rstrip("%)")) for a in axes]
    assert shares == sorted(shares, reverse=True) and shares[1] > 0  # variance explained, in order
    caption = embedding_caption(text)
    assert caption.startswith("PCA, not UMAP: umap-learn is not installed (pip install flashscenic[umap]).")


def test_too_few_cells_for_a_umap_give_a_pca(tmp_path, drawn, monkeypatch):
    from flashscenic import report

    monkeypatch.setattr(report, "_SAMPLE_CELLS", 12)
    text = write_report(make_store(tmp_path, motifs=False, timings=False), tmp_path / "r.html").read_text()
    (coordinates, axes, _), = [args for name, args, _ in drawn if name == "_embedding_figure"]
    assert coordinates.shape == (12, 4) and axes[0].startswith("PC1")
    assert embedding_caption(text).startswith("PCA, not UMAP: 12 cells are too few for a UMAP of 15 neighbours.")


def _label_boxes(figure, axis_labels):
    renderer = figure.canvas.get_renderer()
    return [label.get_window_extent(renderer) for label in axis_labels if label.get_text()]


def _assert_apart(boxes, page):
    """No two labels overlap (by more than half a pixel) and none is cut off by the figure's edge."""
    for i, a in enumerate(boxes):
        assert page.x0 - 0.5 <= a.x0 and a.x1 <= page.x1 + 0.5 and page.y0 - 0.5 <= a.y0 and a.y1 <= page.y1 + 0.5
        for b in boxes[i + 1:]:
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 0.5 or overlap_y <= 0.5, (a, b)


@pytest.mark.parametrize("n_regulons", [12, 60, 150, 200])
def test_heatmap_labels_stay_legible_and_apart_for_many_regulons(n_regulons):
    from flashscenic import report

    rng = np.random.default_rng(n_regulons)
    values = rng.random((n_regulons, 14))
    names = [f"ZNF{i}_EXTENDED_LONG_REGULON_NAME_{i}(+)" for i in range(n_regulons)]  # shortened to 32 characters
    types = [f"cell type number {i}" for i in range(14)]
    rows, row_tree = report._cluster(values)
    columns, column_tree = report._cluster(values.T)
    with report._style():
        figure = report._heatmap_figure(values[rows][:, columns], [names[i] for i in rows],
                                        [types[i] for i in columns], row_tree, column_tree, cmap="viridis", vmin=0,
                                        vmax=1, what="x", ylabel="regulon", xlabel="cell type")
        figure.canvas.draw()
        ax = next(a for a in figure.axes if a.images)
        for labels in (ax.get_yticklabels(), ax.get_xticklabels()):
            assert len(labels) in (n_regulons, 14)
            assert min(label.get_fontsize() for label in labels) >= report._MIN_FONT
            _assert_apart(_label_boxes(figure, labels), figure.bbox)
    # the figure grows with its rows: each row at least as tall as its label's line
    row_inches = ax.get_position().height * figure.get_figheight() / n_regulons
    assert row_inches >= 1.25 * report._MIN_FONT / 72


def test_the_embedding_legend_stays_legible_with_many_cell_types():
    from flashscenic import report

    rng = np.random.default_rng(6)
    n_types = report._MAX_TYPES
    codes = rng.integers(0, n_types, 2000)
    groups = [(f"a long cell type name {t}", codes == t) for t in range(n_types)]
    with report._style():
        figure = report._embedding_figure(rng.normal(size=(2000, 4)), ["PC1", "PC2", "PC3", "PC4"], groups)
        figure.canvas.draw()
        texts = figure.legends[0].get_texts()
        assert len(texts) == n_types and min(t.get_fontsize() for t in texts) >= report._MIN_FONT
        _assert_apart(_label_boxes(figure, texts), figure.bbox)
        colours = {tuple(h.get_markerfacecolor()) for h in figure.legends[0].legend_handles}
        assert len(colours) == n_types  # one colour per type


def test_the_recurrence_of_a_multi_run_is_drawn(tmp_path, drawn):
    store = make_store(tmp_path, motifs=False, timings=False)
    names = store.regulon_names  # 9 regulons in the consensus, found by 3, 3, 2, ... runs; one more by 1 run
    fractions = [1.0, 1.0, 2 / 3, 2 / 3, 2 / 3, 1 / 3, 1.0, 1.0, 2 / 3, 1 / 3]
    store.write_table("regulon_recurrence", pd.DataFrame({"regulon": names + ["Gone(+)"], "recurrence": fractions}))
    store.write_table("target_recurrence", pd.DataFrame({"regulon": ["Tf0(+)", "Tf0(+)", "Gone(+)"],
                                                         "gene": ["G1", "G2", "G3"], "recurrence": [1.0, 0.5, 1.0]}))
    store.mark_complete("grn", n_runs=3, seeds=[7, 8, 9])
    store.mark_complete("pruning", recurrence=True)
    text = write_report(store, tmp_path / "r.html").read_text()
    (runs, in_consensus, n_runs), = [args for name, args, _ in drawn if name == "_recurrence_figure"]
    assert n_runs == 3 and sorted(runs.tolist()) == [1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert sorted(zip(runs.tolist(), in_consensus.tolist())) == [(1, False), (1, True)] + [(2, True)] * 4 + [(3, True)] * 4
    assert "3 GRN runs (seeds 7, 8, 9)" in text and "10 regulons found in at least one run, 4 in every run" in text
    assert "<td>Tf0(+)</td><td>100%</td><td>1</td><td>2</td><td>yes</td>" in text
    assert "<td>Gone(+)</td><td>33%</td><td>1</td><td>1</td><td>no</td>" in text
    assert re.findall(r'<figure id="figure-([a-z]+)">', text).count("recurrence") == 1


def test_the_auc_is_read_in_bounded_blocks_whatever_the_chunking(tmp_path, monkeypatch):
    import zarr

    from flashscenic import report
    from flashscenic.store import ResultsStore

    # one chunk of all cells, as a pySCENIC import makes; AUC values k/1024 sum exactly in any order
    rng = np.random.default_rng(5)
    values = (rng.integers(0, 1024, (90, 9)) / 1024).astype(np.float32)
    store = create_results_store(tmp_path / "results.zarr", cell_names=[f"c{i}" for i in range(90)])
    store.write_auc(values, [f"Tf{i}(+)" for i in range(9)])
    assert store.auc_chunk_ranges() == [(0, 90)]
    labels = report._labels_from(pd.Series(np.repeat(TYPES, N_PER_TYPE)), "test labels")
    whole = report._scan(store, labels)  # the default limit: the chunk in one block

    reads, checks, real_open = [], [], zarr.open_array

    class Spy:
        def __init__(self, array):
            self.array = array

        def __getattr__(self, name):
            return getattr(self.array, name)

        def __getitem__(self, key):
            block = self.array[key]
            reads.append(block.size)
            return block

    def open_array(path, *args, **kwargs):
        array = real_open(path, *args, **kwargs)
        return Spy(array) if Path(path).name == "auc" else array

    monkeypatch.setattr(zarr, "open_array", open_array)
    read = store.auc_reader()  # as write_report does: the completeness checked once, before the scan
    monkeypatch.setattr(ResultsStore, "missing_auc_chunks", lambda self: checks.append(1) or [])
    monkeypatch.setattr(report, "_BLOCK_VALUES", 100)  # 11 rows of 9 regulons
    sliced = report._scan(store, labels, read)
    assert reads and max(reads) <= 100 and sum(reads) == values.size and len(reads) == 9
    assert not checks  # completeness is checked once, by the reader, not per block
    assert np.array_equal(sliced.sums, whole.sums) and np.array_equal(sliced.counts, whole.counts)
    assert np.array_equal(sliced.sample, values) and np.array_equal(sliced.sample, whole.sample)


def test_more_regulons_than_heatmap_rows_shows_the_most_specific(tmp_path, monkeypatch, drawn):
    from flashscenic import report
    from flashscenic.rss import rss_by_label

    monkeypatch.setattr(report, "_MAX_HEATMAP_ROWS", 4)  # of the 9 regulons
    store = make_store(tmp_path, motifs=False, timings=False)
    auc = store.read_auc(as_frame=True)
    specificity = rss_by_label(auc, pd.Series(np.repeat(TYPES, N_PER_TYPE), index=auc.index)).max(axis=0)
    ranked = specificity.sort_values(ascending=False)
    assert ranked.iloc[3] > ranked.iloc[4]  # no tie at the cut
    text = write_report(store, tmp_path / "r.html").read_text()
    note = "the 4 most cell-type-specific of the 9 regulons (highest RSS in any cell type shown)"
    assert text.count(note) == 2  # the activity and the binarisation captions
    maps = heatmaps(drawn)
    for what in ("mean AUC, z-score", "fraction of cells on"):
        values, rows, columns, row_tree, _ = maps[what]
        assert set(rows) == set(ranked.index[:4]) and values.shape == (4, 3) and row_tree is not None
    assert "4 regulons (rows) x 3 cell types (columns)" in text


def test_more_regulons_than_heatmap_rows_without_labels_shows_the_most_often_on(tmp_path, monkeypatch, drawn):
    from flashscenic import report
    from flashscenic.binarization import binarize_auc

    monkeypatch.setattr(report, "_MAX_HEATMAP_ROWS", 4)  # of the 9 regulons
    rng = np.random.default_rng(6)
    values = rng.uniform(0, 0.05, (90, 9))
    for j, n_on in enumerate([20, 45, 10, 60, 30, 15, 50, 25, 35]):  # regulon j is on in n_on random cells
        values[rng.choice(90, size=n_on, replace=False), j] += 0.3
    names = [f"Tf{i}(+)" for i in range(9)]
    store = create_results_store(tmp_path / "results.zarr", cell_names=[f"c{i}" for i in range(90)], chunk_rows=40)
    store.write_auc(values.astype(np.float32), names)
    text = write_report(store, tmp_path / "r.html").read_text()
    fraction = binarize_auc(store.read_auc(as_frame=True), seed=0)[0].mean()  # 90 cells: all used
    ranked = fraction.sort_values(ascending=False, kind="stable")
    assert ranked.iloc[3] > ranked.iloc[4] and list(ranked.index[:4]) != names[:4]  # no tie at the cut
    values, rows, columns, _, _ = heatmaps(drawn)["fraction of cells on"]
    assert rows == list(ranked.index[:4]) and columns == ["all cells"]
    assert np.array_equal(values[:, 0], ranked.to_numpy()[:4])
    assert "(the 4 regulons most often on, of 9); the cells have no labels" in text


def test_an_incomplete_auc_is_refused_before_anything_is_written(tmp_path):
    from flashscenic.errors import IncompleteStageError

    store = create_results_store(tmp_path / "results.zarr", cell_names=[f"c{i}" for i in range(30)], chunk_rows=10)
    store.init_auc(["A(+)", "B(+)"])
    store.write_auc_chunk(0, np.ones((10, 2), dtype=np.float32))  # 2 of 3 chunks missing
    with pytest.raises(IncompleteStageError, match=r"2 of 3 chunk\(s\) are not written yet.*--resume"):
        write_report(store, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
