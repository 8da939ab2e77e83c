"""Resource registry and verified, resumable downloads, against a local HTTP server.

No test touches the internet: every download goes to a threaded HTTP server on 127.0.0.1
(random port) that serves generated files and their ``.sha1sum.txt`` with ``Range``
support, and can cut, stall, fail, redirect or ignore ranges on demand. The suite's network
guard (tests/conftest.py) refuses any connection to another host.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from flashscenic import data
from flashscenic.cli import main
from flashscenic.data import (ChecksumError, DownloadError, ResourceNotFoundError, ResourceSet, cache_status,
                              download_data, list_available_resources, register_resource_set)
from test_rankdb import ranks, write

PREFIX = "/cistarget/"
HUMAN = next(s for s in data._aertslab_sets() if (s.species, s.version) == ("human", "v10"))
DB0, DB1 = (f.path for f in HUMAN.ranking_databases)
ANNOTATION, TFS = HUMAN.motif_annotation.path, HUMAN.tf_list.path


# ----------------------------------------------------------------------------- the local server


class FileServer:
    """What the handler serves, how it misbehaves, and what it was asked."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # path -> responses still to cut half-way
        self.fail: dict[str, list[int]] = {}  # path -> statuses to answer first
        self.stall: set[str] = set()
        self.ignore_range: set[str] = set()
        self.redirect: dict[str, str] = {}
        self.delay = 0.0  # seconds between 16 KiB chunks
        self.validators = {"etag", "last-modified"}  # what a response says about the file's version
        self.versions: dict[str, int] = {}  # path -> how many times it was put (its ETag and Last-Modified)
        self.login_page: str | None = None  # a Content-Type: answer every GET with an HTML page and 200
        self.requests: list[tuple[str, str | None]] = []
        self.if_ranges: list[tuple[str, str | None]] = []  # the If-Range header of each request
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.url = ""

    def put(self, relpath: str, content: bytes, checksum: bool | str = True) -> None:
        self.files[PREFIX + relpath] = content
        self.versions[PREFIX + relpath] = self.versions.get(PREFIX + relpath, 0) + 1
        if checksum:
            digest = checksum if isinstance(checksum, str) else hashlib.sha1(content).hexdigest()
            self.files[PREFIX + relpath + ".sha1sum.txt"] = f"{digest}  {relpath.rsplit('/', 1)[-1]}\n".encode()
        else:
            self.files.pop(PREFIX + relpath + ".sha1sum.txt", None)

    def version(self, path: str) -> dict[str, str]:
        """The validators a response for ``path`` carries: an ETag and a Last-Modified that change with each put."""
        count = self.versions.get(path, 0)
        version = {"etag": f'"v{count}-{hashlib.sha1(self.files[path]).hexdigest()[:12]}"',
                   "last-modified": email.utils.formatdate(1_700_000_000 + 100 * count, usegmt=True)}
        return {k: v for k, v in version.items() if k in self.validators}

    def gets(self, relpath: str) -> list[str | None]:
        """The Range header of each request for ``relpath`` (None: no Range)."""
        return [r for p, r in self.requests if p == PREFIX + relpath]


LOGIN_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n"
              b"<body><form action=\"/login\" method=\"post\"><input name=\"user\"></form></body></html>\n")


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        state: FileServer = self.server.state
        path = urllib.parse.urlsplit(self.path).path
        with state.lock:
            state.requests.append((path, self.headers.get("Range")))
            state.if_ranges.append((path, self.headers.get("If-Range")))
            failures = state.fail.get(path)
            status = failures.pop(0) if failures else None
            cut = state.cut.get(path, 0)
            if cut:
                state.cut[path] = cut - 1
        if path in state.redirect:
            self.send_response(302)
            self.send_header("Location", state.redirect[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if status is not None:
            self.send_error(status)
            return
        if state.login_page is not None:
            self.send_response(200)
            self.send_header("Content-Type", state.login_page)
            self.send_header("Content-Length", str(len(LOGIN_PAGE)))
            self.end_headers()
            self.wfile.write(LOGIN_PAGE)
            return
        if path not in state.files:
            self.send_error(404)
            return
        content = state.files[path]
        start = 0
        version = state.version(path)
        if_range = self.headers.get("If-Range")
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and path not in state.ignore_range and (if_range is None or if_range in version.values()):
            start = int(match.group(1))
            if start >= len(content):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(content)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        else:
            self.send_response(200)
        body = content[start:]
        for header, value in version.items():
            self.send_header(header.title().replace("Etag", "ETag"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path in state.stall:
            self.wfile.flush()
            state.release.wait(20)
            return
        if cut:
            body = body[: len(body) // 2]  # then the connection closes: the client sees a short body
        try:
            for offset in range(0, len(body), 16384):
                self.wfile.write(body[offset : offset + 16384])
                if state.delay:
                    time.sleep(state.delay)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No FLASHSCENIC_* settings, no proxies, fast backoff (conftest.py blocks the network)."""
    for name in ("FLASHSCENIC_CACHE", "FLASHSCENIC_RESOURCE_URL", "FLASHSCENIC_OFFLINE", "http_proxy",
                 "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(data, "_BACKOFF_SECONDS", 0.001)


@pytest.fixture
def server():
    state = FileServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = state
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}{PREFIX}"
    rng = np.random.default_rng(0)
    state.put(DB0, rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    state.put(DB1, rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    state.put(ANNOTATION, b"#motif_id\tgene_name\tmotif_similarity_qvalue\torthologous_identity\tdescription\n"
              b"m1\tTF1\t0.0\t1.0\tgene is directly annotated\n")
    state.put(TFS, b"TF1\nTF2\n")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()


def fetch(server, cache, **kwargs):
    return download_data("human", "v10", cache_dir=cache, base_url=server.url, verbose=False, **kwargs)


def served(server, relpath):
    return server.files[PREFIX + relpath]


def database_bytes(tmp_path, seed=0) -> bytes:
    """A small genuine ranking database: what a server without checksums must serve to be accepted."""
    (tmp_path / "made").mkdir(exist_ok=True)
    return write(tmp_path / "made" / f"db{seed}.feather", ranks(seed=seed)).read_bytes()


def leftovers(tmp_path):
    """What the cache directory holds besides lock files."""
    directory = tmp_path / "scenic" / "human" / "v10"
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock")) if directory.is_dir() else []


# ----------------------------------------------------------------------------- downloads


def test_download_verifies_every_file_and_reuses_them_offline_of_the_network(server, tmp_path):
    got = fetch(server, tmp_path)
    directory = tmp_path / "scenic" / "human" / "v10"
    assert got.directory == directory and (got.species, got.version, got.datasource) == ("human", "v10", "scenic")
    assert [p.name for p in got.ranking_databases] == [DB0.rsplit("/", 1)[-1], DB1.rsplit("/", 1)[-1]]
    for path, relpath in zip((*got.ranking_databases, got.motif_annotation, got.tf_list), (DB0, DB1, ANNOTATION, TFS)):
        assert path.parent == directory and path.read_bytes() == served(server, relpath)
        record = json.loads((path.parent / (path.name + ".verified.json")).read_text())
        assert record["checked"] == "sha1sum" and record["sha1"] == hashlib.sha1(path.read_bytes()).hexdigest()
        assert (path.parent / (path.name + ".sha1sum.txt")).is_file()
    assert not list(directory.glob("*.partial"))
    before = len(server.requests)
    assert fetch(server, tmp_path) == got
    assert len(server.requests) == before  # verified files are reused without a request
    assert {s.state for s in cache_status(HUMAN, tmp_path)} == {"verified"}


def test_checksum_mismatch_deletes_the_file_and_says_so(server, tmp_path):
    server.put(DB0, served(server, DB0), checksum="0" * 40)
    with pytest.raises(ChecksumError, match=r"does not match its published SHA-1 \(expected 0{40}, got .*the download was deleted"):
        fetch(server, tmp_path)
    leftovers = [p.name for p in (tmp_path / "scenic" / "human" / "v10").iterdir() if p.name.startswith("hg38_500bp")]
    assert [n for n in leftovers if not n.endswith(".lock")] == []


def test_connection_cut_mid_file_is_resumed_with_range(server, tmp_path, caplog):
    server.cut[PREFIX + DB0] = 1
    got = fetch(server, tmp_path)
    assert got.ranking_databases[0].read_bytes() == served(server, DB0)
    assert server.gets(DB0) == [None, f"bytes={len(served(server, DB0)) // 2}-"]
    assert "interrupted (connection closed before the end of the file)" in caplog.text


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    directory = tmp_path / "scenic" / "human" / "v10"
    directory.mkdir(parents=True)
    name = DB0.rsplit("/", 1)[-1]
    (directory / f"{name}.partial").write_bytes(served(server, DB0)[:1000])
    got = fetch(server, tmp_path)
    assert server.gets(DB0) == ["bytes=1000-"]
    assert got.ranking_databases[0].read_bytes() == served(server, DB0)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    directory = tmp_path / "scenic" / "human" / "v10"
    directory.mkdir(parents=True)
    (directory / (DB0.rsplit("/", 1)[-1] + ".partial")).write_bytes(served(server, DB0)[:1000])
    server.ignore_range.add(PREFIX + DB0)
    assert fetch(server, tmp_path).ranking_databases[0].read_bytes() == served(server, DB0)


def test_wrong_partial_fails_its_checksum_and_is_deleted_then_a_rerun_succeeds(server, tmp_path):
    directory = tmp_path / "scenic" / "human" / "v10"
    directory.mkdir(parents=True)
    partial = directory / (DB0.rsplit("/", 1)[-1] + ".partial")
    partial.write_bytes(b"\0" * 1000)  # e.g. left by a run against another version of the file
    with pytest.raises(ChecksumError, match="deleted"):
        fetch(server, tmp_path)
    assert not partial.exists()
    assert fetch(server, tmp_path).ranking_databases[0].read_bytes() == served(server, DB0)


def test_404_fails_at_once_naming_the_url_and_the_fix(server, tmp_path):
    del server.files[PREFIX + TFS]
    with pytest.raises(DownloadError, match=r"allTFs_hg38\.txt was not found on the server \(HTTP 404\); check the species"):
        fetch(server, tmp_path)
    assert server.gets(TFS) == [None]  # no retries for a 404
    assert not list((tmp_path / "scenic" / "human" / "v10").glob("allTFs_hg38.txt*[!k]"))


def test_server_errors_are_retried(server, tmp_path):
    server.fail[PREFIX + DB1] = [503, 500]
    assert fetch(server, tmp_path).ranking_databases[1].read_bytes() == served(server, DB1)
    assert len(server.gets(DB1)) == 3


def test_stalled_server_times_out_after_the_retries(server, tmp_path):
    server.stall.add(PREFIX + DB0)
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=r"after 2 attempt\(s\) without progress: timed out"):
        fetch(server, tmp_path, timeout=0.3, retries=1)
    assert time.perf_counter() - start < 5
    assert len(server.gets(DB0)) == 2


def test_offline_never_touches_the_network_and_names_what_is_missing(server, tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHSCENIC_OFFLINE", "1")
    with pytest.raises(ResourceNotFoundError, match=r"offline mode \(FLASHSCENIC_OFFLINE=1.*hg38_500bp.* is not in the cache"):
        fetch(server, tmp_path)
    with pytest.raises(FileNotFoundError):  # a built-in callers already catch
        fetch(server, tmp_path)
    assert server.requests == []


def test_offline_uses_verified_files_and_rechecks_changed_ones(server, tmp_path):
    got = fetch(server, tmp_path)
    before = len(server.requests)
    assert fetch(server, tmp_path, offline=True) == got
    os.utime(got.tf_list, ns=(1, 1))  # a copy that did not keep times: re-hashed, still fine
    assert fetch(server, tmp_path, offline=True) == got
    got.ranking_databases[1].write_bytes(b"x" * 200_000)  # damaged in place
    with pytest.raises(ResourceNotFoundError, match="present but unverified"):
        fetch(server, tmp_path, offline=True)
    assert len(server.requests) == before


def test_changed_cached_file_is_downloaded_again(server, tmp_path):
    got = fetch(server, tmp_path)
    damaged = bytearray(got.ranking_databases[0].read_bytes())
    damaged[100] ^= 0xFF
    got.ranking_databases[0].write_bytes(bytes(damaged))
    assert fetch(server, tmp_path).ranking_databases[0].read_bytes() == served(server, DB0)


def test_force_downloads_again(server, tmp_path):
    fetch(server, tmp_path)
    server.put(DB0, b"new version" * 1000)
    assert fetch(server, tmp_path).ranking_databases[0].read_bytes() != served(server, DB0)  # cached copy kept
    assert fetch(server, tmp_path, force=True).ranking_databases[0].read_bytes() == served(server, DB0)
    with pytest.raises(ValueError, match="force=True needs the network"):
        fetch(server, tmp_path, force=True, offline=True)


def test_server_without_checksums_warns_and_checks_the_size(server, tmp_path):
    server.put(DB0, database_bytes(tmp_path), checksum=False)
    with pytest.warns(UserWarning, match=r"publishes no checksum for hg38_500bp.*only its size will be checked"):
        got = fetch(server, tmp_path)
    record = json.loads(got.ranking_databases[0].with_name(got.ranking_databases[0].name + ".verified.json").read_text())
    assert record["checked"] == "size" and got.ranking_databases[0].read_bytes() == served(server, DB0)


@pytest.mark.filterwarnings("ignore:.*(checksum|SHA-1)")
@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream", "text/plain"])
def test_a_mirror_answering_with_a_login_page_is_refused_and_nothing_is_kept(server, tmp_path, content_type):
    server.login_page = content_type  # 200 and the same HTML page under every name, checksums included
    with pytest.raises(DownloadError, match=r"^hg38_500bp_\S+\.feather: .*refused") as caught:
        fetch(server, tmp_path)
    assert "\n" not in str(caught.value)
    directory = tmp_path / "scenic" / "human" / "v10"
    for file in HUMAN.files:  # each kind refuses it by its own check
        with pytest.raises(DownloadError, match=rf"^{re.escape(file.name)}: .*refused") as caught:
            data._ensure_file(file, directory / file.name, HUMAN.url(file, server.url), force=False, timeout=5,
                              retries=0, verbose=False)
        assert "\n" not in str(caught.value)
    assert leftovers(tmp_path) == []  # nothing kept, nothing recorded as verified
    assert {s.state for s in cache_status(HUMAN, tmp_path)} == {"missing"}
    with pytest.raises(ResourceNotFoundError):
        fetch(server, tmp_path, offline=True)


def test_genuine_files_without_checksums_are_accepted_by_their_kind(server, tmp_path):
    for relpath, content in ((DB0, database_bytes(tmp_path, 0)), (DB1, database_bytes(tmp_path, 1)),
                             (ANNOTATION, served(server, ANNOTATION)), (TFS, served(server, TFS))):
        server.put(relpath, content, checksum=False)
    with pytest.warns(UserWarning, match="publishes no checksum"):
        got = fetch(server, tmp_path)
    for path, relpath in zip((*got.ranking_databases, got.motif_annotation, got.tf_list), (DB0, DB1, ANNOTATION, TFS)):
        assert path.read_bytes() == served(server, relpath)
    assert {s.state for s in cache_status(HUMAN, tmp_path)} == {"verified"}


def test_an_html_page_recorded_by_an_older_version_is_not_trusted(server, tmp_path):
    """Records once written after a size check alone ("checked": "size") no longer vouch for a file."""
    directory = tmp_path / "scenic" / "human" / "v10"
    directory.mkdir(parents=True)
    tf_list = directory / HUMAN.tf_list.name
    tf_list.write_bytes(LOGIN_PAGE)
    stat = tf_list.stat()
    data._record_path(tf_list).write_text(json.dumps({
        "file": tf_list.name, "url": None, "sha1": hashlib.sha1(LOGIN_PAGE).hexdigest(), "checked": "size",
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}))
    assert {s.file.kind: s.state for s in cache_status(HUMAN, tmp_path)}["tf_list"] == "unverified"
    with pytest.raises(ResourceNotFoundError, match=r"allTFs_hg38\.txt is present but unverified"):
        data._ensure_file(HUMAN.tf_list, tf_list, None, force=False, timeout=5, retries=0, verbose=False)
    server.put(TFS, served(server, TFS), checksum=False)
    with pytest.warns(UserWarning, match="publishes no checksum"):
        assert fetch(server, tmp_path).tf_list.read_bytes() == served(server, TFS)


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_a_resumed_download_whose_server_file_changed_restarts(server, tmp_path, validator):
    server.validators = {validator}
    server.cut[PREFIX + DB0] = 1
    server.fail[PREFIX + DB0] = [None, 403]  # served (and cut half-way), then refused: the run stops
    with pytest.raises(DownloadError, match="HTTP 403"):
        fetch(server, tmp_path)
    half = len(served(server, DB0)) // 2
    partial = tmp_path / "scenic" / "human" / "v10" / (DB0.rsplit("/", 1)[-1] + ".partial")
    assert partial.read_bytes() == served(server, DB0)[:half]
    started_from = server.version(PREFIX + DB0)[validator]
    server.put(DB0, bytes(reversed(served(server, DB0))))  # a new version of the file, same size
    assert server.version(PREFIX + DB0)[validator] != started_from
    got = fetch(server, tmp_path)
    assert server.gets(DB0)[-1] == f"bytes={half}-"
    assert [value for path, value in server.if_ranges if path == PREFIX + DB0][-1] == started_from
    assert got.ranking_databases[0].read_bytes() == served(server, DB0)  # the old version is gone: started over
    record = json.loads(data._record_path(got.ranking_databases[0]).read_text())
    assert record["checked"] == "sha1sum" and record["sha1"] == hashlib.sha1(served(server, DB0)).hexdigest()
    assert [name for name in leftovers(tmp_path) if ".partial" in name] == []


def test_a_partial_without_a_version_or_a_checksum_is_not_resumed(server, tmp_path):
    """Nothing could tell a resumed file of mixed versions apart: start over."""
    server.put(DB0, database_bytes(tmp_path), checksum=False)
    directory = tmp_path / "scenic" / "human" / "v10"
    directory.mkdir(parents=True)
    (directory / (DB0.rsplit("/", 1)[-1] + ".partial")).write_bytes(served(server, DB0)[:1000])
    with pytest.warns(UserWarning, match="publishes no checksum"):
        got = fetch(server, tmp_path)
    assert server.gets(DB0) == [None] and got.ranking_databases[0].read_bytes() == served(server, DB0)


def test_sha1_is_computed_from_the_bytes_on_disk(server, tmp_path, monkeypatch):
    """Bytes that reach the disk differently from the stream (here: appended between attempts) are caught."""
    server.cut[PREFIX + DB0] = 1
    partial = tmp_path / "scenic" / "human" / "v10" / (DB0.rsplit("/", 1)[-1] + ".partial")

    def sleep(seconds):
        if partial.is_file():
            with open(partial, "ab") as f:
                f.write(b"\0" * 100)

    monkeypatch.setattr(data, "time", type("Clock", (), {"sleep": staticmethod(sleep)}))
    with pytest.raises(ChecksumError, match="the download was deleted"):
        fetch(server, tmp_path)
    assert not partial.exists()


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/db1"])
def test_redirects_only_to_http(server, tmp_path, target):
    server.files["/mirror/db0"] = served(server, DB0)
    server.redirect[PREFIX + DB0] = server.url.replace(PREFIX, "/mirror/db0")
    assert fetch(server, tmp_path).ranking_databases[0].read_bytes() == served(server, DB0)
    server.redirect[PREFIX + DB1] = target
    with pytest.raises(DownloadError, match=rf"redirects to '{target}'; only redirects to http\(s\)"):
        fetch(server, tmp_path / "again")


@pytest.mark.parametrize("url", ["ftp://mirror.example/cistarget/", "file:///tmp/cistarget/"])
def test_base_url_must_be_http(tmp_path, monkeypatch, url):
    with pytest.raises(ValueError, match="must be an http:// or https:// URL"):
        download_data(cache_dir=tmp_path, base_url=url)
    monkeypatch.setenv("FLASHSCENIC_RESOURCE_URL", url)
    with pytest.raises(ValueError, match="FLASHSCENIC_RESOURCE_URL must be an http"):
        download_data(cache_dir=tmp_path)


def test_environment_sets_mirror_and_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHSCENIC_RESOURCE_URL", server.url)
    monkeypatch.setenv("FLASHSCENIC_CACHE", str(tmp_path / "shared"))
    got = download_data("human", "v10", verbose=False)
    assert got.directory == tmp_path / "shared" / "scenic" / "human" / "v10"
    monkeypatch.delenv("FLASHSCENIC_CACHE")
    monkeypatch.chdir(tmp_path)
    assert HUMAN.directory() == Path("flashscenic_data") / "scenic" / "human" / "v10"  # the documented default


def test_two_threads_share_one_download(server, tmp_path):
    server.delay = 0.01  # long enough (~0.3 s a set) that both want the same file at once
    results, errors = [], []

    def run():
        try:
            results.append(fetch(server, tmp_path))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results[0] == results[1]
    for relpath in (DB0, DB1, ANNOTATION, TFS):
        assert server.gets(relpath) == [None], relpath  # each file downloaded exactly once
    assert results[0].ranking_databases[0].read_bytes() == served(server, DB0)


def test_two_processes_share_one_download(server, tmp_path):
    server.delay = 0.01
    code = ("import sys; from flashscenic.data import download_data; "
            "got = download_data('human', 'v10', cache_dir=sys.argv[1], base_url=sys.argv[2], verbose=False); "
            "print(got.ranking_databases[0])")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("FLASHSCENIC_")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), server.url], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for relpath in (DB0, DB1, ANNOTATION, TFS):
        assert server.gets(relpath) == [None], relpath
    assert Path(outputs[0][0].strip()).read_bytes() == served(server, DB0)


# ----------------------------------------------------------------------------- registry


def test_registry_has_the_spec_resources():
    sets = {(s.species, s.version): s for s in list_available_resources(datasource="scenic")}
    assert set(sets) == {("human", "v10"), ("mouse", "v10"), ("drosophila", "v10"), ("human", "v9"), ("mouse", "v9")}
    human = sets["human", "v10"]
    assert [f.path for f in human.ranking_databases] == [
        "databases/homo_sapiens/hg38/refseq_r80/mc_v10_clust/gene_based/"
        "hg38_500bp_up_100bp_down_full_tx_v10_clust.genes_vs_motifs.rankings.feather",
        "databases/homo_sapiens/hg38/refseq_r80/mc_v10_clust/gene_based/"
        "hg38_10kbp_up_10kbp_down_full_tx_v10_clust.genes_vs_motifs.rankings.feather",
    ]
    assert human.motif_annotation.path == "motif2tf/motifs-v10nr_clust-nr.hgnc-m0.001-o0.0.tbl"
    assert human.tf_list.path == "tf_lists/allTFs_hg38.txt"
    assert human.url(human.tf_list) == "https://resources.aertslab.org/cistarget/tf_lists/allTFs_hg38.txt"
    fly = sets["drosophila", "v10"]
    assert fly.ranking_databases[0].path.startswith("databases/drosophila_melanogaster/dm6/flybase_r6.02/mc_v10_clust/")
    assert fly.motif_annotation.name == "motifs-v10nr_clust-nr.flybase-m0.001-o0.0.tbl" and fly.tf_list.name == "allTFs_dmel.txt"
    mouse9 = sets["mouse", "v9"]
    assert [f.path for f in mouse9.ranking_databases] == [
        "databases/mus_musculus/mm10/refseq_r80/mc9nr/gene_based/"
        "mm10__refseq-r80__500bp_up_and_100bp_down_tss.mc9nr.genes_vs_motifs.rankings.feather",
        "databases/mus_musculus/mm10/refseq_r80/mc9nr/gene_based/"
        "mm10__refseq-r80__10kb_up_and_down_tss.mc9nr.genes_vs_motifs.rankings.feather",
    ]
    assert mouse9.motif_annotation.name == "motifs-v9-nr.mgi-m0.001-o0.0.tbl" and mouse9.tf_list.name == "allTFs_mm.txt"


def test_registry_filters_and_errors():
    assert [s.version for s in list_available_resources(species="human")] == ["v10", "v9"]
    assert [s.species for s in list_available_resources(species="fly")] == ["drosophila"]
    assert list_available_resources(species="drosophila", version="v9") == []
    with pytest.raises(ValueError, match="unknown species 'hman'; known: drosophila, human, mouse"):
        list_available_resources(species="hman")
    with pytest.raises(ValueError, match=r"no resources for species='drosophila', version='v9'; available: "
                                         r"drosophila v10, human v10, human v9, mouse v10, mouse v9"):
        download_data("drosophila", "v9")
    with pytest.raises(ValueError, match="unknown datasource 'elsewhere'"):
        download_data(datasource="elsewhere")


def test_another_datasource_can_be_registered(server, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_REGISTRY", dict(data._REGISTRY))
    custom = ResourceSet("mylab", "human", "v1", server.url, ranking_databases=(DB0,), motif_annotation=ANNOTATION,
                         tf_list=TFS, description="a lab's own databases")
    register_resource_set(custom)
    with pytest.raises(ValueError, match="already registered"):
        register_resource_set(custom)
    got = download_data("human", "v1", datasource="mylab", cache_dir=tmp_path, verbose=False)
    assert got.directory == tmp_path / "mylab" / "human" / "v1" and len(got.ranking_databases) == 1
    assert got.tf_list.read_bytes() == served(server, TFS)


def test_cache_status_states(server, tmp_path):
    assert {s.state for s in cache_status(HUMAN, tmp_path)} == {"missing"}
    got = fetch(server, tmp_path)
    got.tf_list.with_name(got.tf_list.name + ".verified.json").unlink()
    got.motif_annotation.rename(got.motif_annotation.with_name(got.motif_annotation.name + ".partial"))
    states = {s.file.kind: (s.state, s.size) for s in cache_status(HUMAN, tmp_path)}
    assert states["ranking_database"] == ("verified", 200_000)  # the last database wins the dict
    assert states["tf_list"] == ("unverified", 8) and states["motif_annotation"][0] == "partial"


# ----------------------------------------------------------------------------- command line


def test_cli_download_then_resources(server, tmp_path, capsys):
    assert main(["download", "--species", "human", "--version", "v10", "--cache-dir", str(tmp_path),
                 "--base-url", server.url, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"scenic human v10: verified, in {tmp_path / 'scenic' / 'human' / 'v10'}" in out
    assert re.search(r"^  TF list\s+.*allTFs_hg38\.txt$", out, re.M)
    assert main(["resources", "--species", "human", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "scenic human v10 (hg38, motif collection v10 (clustered)): 4/4 files cached" in out
    assert "scenic human v9 (hg38, motif collection v9 (mc9nr)): 0/4 files cached" in out
    assert re.search(r"hg38_500bp_up_100bp_down_full_tx_v10_clust.genes_vs_motifs.rankings.feather  \[293.0 KiB, verified\]", out)


def test_cli_errors_are_one_line(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLASHSCENIC_OFFLINE", "1")
    assert main(["download", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("flashscenic: error: offline mode")
    assert main(["resources", "--species", "cat"]) == 2
    assert capsys.readouterr().err.strip() == "flashscenic: error: unknown species 'cat'; known: drosophila, human, mouse"


def test_a_verification_record_failing_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "db.feather"
    path.write_bytes(b"ranks")
    data._write_record(path, "http://mirror/db.feather", "a" * 40, "sha1sum")
    record = data._record_path(path)
    before = record.read_bytes()
    real = Path.write_text

    def write_text(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_text)
    data._write_record(path, "http://mirror/db.feather", "b" * 40, "sha1sum")  # logged: the file is still verified
    assert record.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, record.name])  # no partial file
