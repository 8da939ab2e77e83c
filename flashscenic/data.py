"""cisTarget resources: a registry, and downloads that are verified, resumable and shared safely.

SCENIC needs three kinds of files per species and motif collection: two ranking databases
(hundreds of MB to GB each), a motif-to-TF annotation table and a list of TFs. Users lose
hours to them: downloads that break half-way, files silently truncated, the wrong species.
This module makes getting them boring:

* a registry (:func:`list_available_resources`) of the Aertslab sets (SCENIC_SPEC.md,
  section 9), to which another datasource can be added (:func:`register_resource_set`);
* :func:`download_data` fetches a set into a cache (``datasource/species/version/``) with
  timeouts, retries with exponential backoff, resumption of partial files through HTTP
  ``Range`` (with ``If-Range``, so a file changed on the server restarts the download), a
  ``.partial`` file renamed atomically when complete, SHA-1 verification of the bytes on disk
  against the sibling ``.sha1sum.txt`` the server publishes, a progress bar, and a lock so
  that processes sharing a cache never write the same file at once;
* a file without a published checksum is checked by its kind (Feather magic and schema,
  motif-table header, one TF name per line; never an HTML page): a mirror or proxy that
  answers with a login page is refused, and what it sent deleted;
* a file in the cache is reused only when verified: a ``<file>.verified.json`` record is
  written after a successful check and ties the SHA-1 to the file's size, mtime and inode,
  so later calls check it with one ``stat`` and never touch the network.

Environment: ``FLASHSCENIC_CACHE`` (cache directory; default ``./flashscenic_data``),
``FLASHSCENIC_RESOURCE_URL`` (a mirror's base URL, replacing the datasource's),
``FLASHSCENIC_OFFLINE=1`` (never use the network; fail clearly when a file is missing).

Only the standard library is imported here at module level, so ``import flashscenic``
stays light; tqdm and filelock are imported by the download itself.
"""

from __future__ import annotations

import codecs
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from ._utils import atomic_path
from .errors import ChecksumError, DownloadError, InputError, ResourceNotFoundError
from .params import DEFAULT_DATASOURCE, DEFAULT_SPECIES, DEFAULT_VERSION

__all__ = [
    "DownloadedResources",
    "ResourceFile",
    "ResourceSet",
    "CachedFile",
    "DownloadError",
    "ChecksumError",
    "ResourceNotFoundError",
    "download_data",
    "list_available_resources",
    "register_resource_set",
    "cache_status",
    "default_cache_dir",
]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "flashscenic_data"
CACHE_ENV = "FLASHSCENIC_CACHE"
URL_ENV = "FLASHSCENIC_RESOURCE_URL"
OFFLINE_ENV = "FLASHSCENIC_OFFLINE"
AERTSLAB_URL = "https://resources.aertslab.org/cistarget/"

KINDS = ("ranking_database", "motif_annotation", "tf_list")
CHECKSUM_SUFFIX = ".sha1sum.txt"
PARTIAL_SUFFIX = ".partial"
PARTIAL_INFO_SUFFIX = ".partial.json"  # the server's version (ETag or Last-Modified) a .partial began from
RECORD_SUFFIX = ".verified.json"
LOCK_SUFFIX = ".lock"

_CHUNK = 1 << 20  # bytes per read: large enough for speed, small enough for a lively progress bar
_BACKOFF_SECONDS = 1.0  # first wait between attempts; doubles after each attempt that made no progress
_BACKOFF_MAX_SECONDS = 60.0
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_KIND_LABELS = {"ranking_database": "Feather ranking database", "motif_annotation": "motif annotation table",
                "tf_list": "TF list"}
_SPECIES_ALIASES = {
    "homo_sapiens": "human", "hs": "human",
    "mus_musculus": "mouse", "mm": "mouse",
    "drosophila_melanogaster": "drosophila", "fly": "drosophila", "dmel": "drosophila",
}


# ----------------------------------------------------------------------------- errors


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ResourceFile:
    """One file of a resource set.

    Attributes
    ----------
    kind
        ``'ranking_database'``, ``'motif_annotation'`` or ``'tf_list'``.
    path
        Path relative to the datasource's base URL (the server's layout, kept by mirrors).
    size
        Size in bytes when known in advance, else None (shown by ``flashscenic resources``).
    """

    kind: str
    path: str
    size: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:  # each kind has the check a download without a checksum must pass
            raise InputError(f"resource file {self.path!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def name(self) -> str:
        """The file name: the name it gets in the cache, and the database name pySCENIC uses."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ResourceSet:
    """The files SCENIC needs for one species and motif collection, from one datasource.

    ``ranking_databases``, ``motif_annotation`` and ``tf_list`` may be given as paths
    (relative to ``base_url``) or as :class:`ResourceFile`; paths are wrapped.
    """

    datasource: str
    species: str
    version: str
    base_url: str
    ranking_databases: tuple
    motif_annotation: ResourceFile | str
    tf_list: ResourceFile | str
    description: str = ""

    def __post_init__(self):
        def wrap(item, kind):
            return item if isinstance(item, ResourceFile) else ResourceFile(kind, str(item))

        databases = tuple(wrap(d, "ranking_database") for d in self.ranking_databases)
        if not databases:
            raise InputError(f"resource set {self.label}: give at least one ranking database")
        object.__setattr__(self, "ranking_databases", databases)
        object.__setattr__(self, "motif_annotation", wrap(self.motif_annotation, "motif_annotation"))
        object.__setattr__(self, "tf_list", wrap(self.tf_list, "tf_list"))
        object.__setattr__(self, "base_url", _check_base_url(self.base_url, f"base_url of {self.label}"))
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise InputError(f"resource set {self.label}: file names must be distinct (they share one cache directory), got {names}")

    @property
    def label(self) -> str:
        return f"{self.datasource}/{self.species}/{self.version}"

    @property
    def files(self) -> tuple[ResourceFile, ...]:
        """Every file of the set: the ranking databases, then the annotation, then the TF list."""
        return (*self.ranking_databases, self.motif_annotation, self.tf_list)

    def directory(self, cache_dir=None) -> Path:
        """Where the set lives in the cache: ``<cache>/<datasource>/<species>/<version>``."""
        return default_cache_dir(cache_dir) / self.datasource / self.species / self.version

    def url(self, file: ResourceFile, base_url: str | None = None) -> str:
        """The URL of ``file``: ``base_url`` (or ``FLASHSCENIC_RESOURCE_URL``, else the set's own) + its path."""
        return _resolve_base_url(base_url, self.base_url) + urllib.parse.quote(file.path, safe="/")


@dataclass(frozen=True)
class DownloadedResources:
    """Local paths of a verified resource set, as :func:`download_data` returns them.

    ``directory`` holds the set's files: ``<cache_dir>/<datasource>/<species>/<version>``.
    ``ranking_dbs`` and ``cache_dir`` are upstream flashscenic's names, read-only.
    """

    species: str
    version: str
    datasource: str
    ranking_databases: tuple[Path, ...]
    motif_annotation: Path
    tf_list: Path
    directory: Path

    @property
    def ranking_dbs(self) -> tuple[Path, ...]:
        """``ranking_databases``, under upstream flashscenic's name."""
        return self.ranking_databases

    @property
    def cache_dir(self) -> Path:
        """The cache the set was downloaded into, as upstream flashscenic names it: the
        ``cache_dir`` to give ``download_data`` or ``run_flashscenic`` to find these files
        again (upstream keeps the files there; here they are in ``directory``, below it)."""
        return self.directory.parents[2]


@dataclass(frozen=True)
class CachedFile:
    """What the cache holds for one file of a set (see :func:`cache_status`).

    ``state`` is ``'verified'`` (present and checked), ``'unverified'`` (present, never
    checked: a download will check it first), ``'partial'`` (an interrupted download a new
    run resumes) or ``'missing'``; ``size`` is the bytes on disk (None when missing).
    """

    file: ResourceFile
    path: Path
    state: str
    size: int | None


_REGISTRY: dict[tuple[str, str, str], ResourceSet] = {}


def register_resource_set(resource_set: ResourceSet, *, replace: bool = False) -> None:
    """Add a resource set to the registry, e.g. to describe another datasource (a lab's server).

    Parameters
    ----------
    resource_set
        Its ``datasource``, ``species`` and ``version`` name it in :func:`download_data`.
    replace
        Replace a registered set of the same name instead of refusing.

    Examples
    --------
    >>> register_resource_set(ResourceSet(  # doctest: +SKIP
    ...     "mylab", "human", "v1", "https://data.mylab.org/cistarget/",
    ...     ranking_databases=("hg38_custom.genes_vs_motifs.rankings.feather",),
    ...     motif_annotation="motifs_custom.tbl", tf_list="tfs.txt"))
    >>> download_data("human", "v1", datasource="mylab")  # doctest: +SKIP
    """
    if not isinstance(resource_set, ResourceSet):
        raise InputError(f"register_resource_set expects a ResourceSet, got {type(resource_set).__name__}")
    key = (resource_set.datasource, resource_set.species, resource_set.version)
    if key in _REGISTRY and not replace:
        raise InputError(f"resource set {resource_set.label} is already registered; pass replace=True to replace it")
    _REGISTRY[key] = resource_set


def list_available_resources(datasource: str | None = None, species: str | None = None,
                             version: str | None = None) -> list[ResourceSet]:
    """The registered resource sets, optionally filtered; sorted by datasource, species, version.

    An unknown datasource, species or version is an error naming the known ones (so a
    typo does not look like "nothing available"); a known species without that version
    (drosophila v9) gives an empty list.
    """
    species = _canonical_species(species)
    for what, value in (("datasource", datasource), ("species", species), ("version", version)):
        known = sorted({getattr(s, what) for s in _REGISTRY.values()})
        if value is not None and value not in known:
            raise InputError(f"unknown {what} {value!r}; known: {', '.join(known)}")
    found = [s for s in _REGISTRY.values()
             if (datasource is None or s.datasource == datasource)
             and (species is None or s.species == species)
             and (version is None or s.version == version)]
    return sorted(found, key=lambda s: (s.datasource, s.species, s.version))


def _canonical_species(species: str | None) -> str | None:
    if species is None:
        return None
    lowered = str(species).lower()
    return _SPECIES_ALIASES.get(lowered, lowered)


def _find_set(species: str, version: str, datasource: str) -> ResourceSet:
    species = _canonical_species(species)
    found = _REGISTRY.get((datasource, species, version))
    if found is not None:
        return found
    sets = [s for s in _REGISTRY.values() if s.datasource == datasource]
    if not sets:
        raise InputError(f"unknown datasource {datasource!r}; known: {', '.join(sorted({k[0] for k in _REGISTRY}))} "
                         "(register_resource_set adds one)")
    available = ", ".join(f"{s.species} {s.version}" for s in sorted(sets, key=lambda s: (s.species, s.version)))
    raise InputError(f"datasource {datasource!r} has no resources for species={species!r}, version={version!r}; "
                     f"available: {available}")


def _aertslab_sets() -> list[ResourceSet]:
    """The Aertslab cisTarget sets of SCENIC_SPEC.md, section 9."""
    sets = []
    v10 = (("human", "homo_sapiens/hg38/refseq_r80", "hg38", "hgnc", "allTFs_hg38.txt"),
           ("mouse", "mus_musculus/mm10/refseq_r80", "mm10", "mgi", "allTFs_mm.txt"),
           ("drosophila", "drosophila_melanogaster/dm6/flybase_r6.02", "dm6", "flybase", "allTFs_dmel.txt"))
    for species, folder, assembly, nomenclature, tfs in v10:
        sets.append(ResourceSet(
            "scenic", species, "v10", AERTSLAB_URL,
            ranking_databases=tuple(
                f"databases/{folder}/mc_v10_clust/gene_based/{assembly}_{region}_full_tx_v10_clust.genes_vs_motifs.rankings.feather"
                for region in ("500bp_up_100bp_down", "10kbp_up_10kbp_down")),
            motif_annotation=f"motif2tf/motifs-v10nr_clust-nr.{nomenclature}-m0.001-o0.0.tbl",
            tf_list=f"tf_lists/{tfs}",
            description=f"{assembly}, motif collection v10 (clustered)"))
    for species, folder, assembly, nomenclature, tfs in v10[:2]:
        sets.append(ResourceSet(
            "scenic", species, "v9", AERTSLAB_URL,
            ranking_databases=tuple(
                f"databases/{folder}/mc9nr/gene_based/{assembly}__refseq-r80__{region}.mc9nr.genes_vs_motifs.rankings.feather"
                for region in ("500bp_up_and_100bp_down_tss", "10kb_up_and_down_tss")),
            motif_annotation=f"motif2tf/motifs-v9-nr.{nomenclature}-m0.001-o0.0.tbl",
            tf_list=f"tf_lists/{tfs}",
            description=f"{assembly}, motif collection v9 (mc9nr)"))
    return sets


# ----------------------------------------------------------------------------- settings


def default_cache_dir(cache_dir=None) -> Path:
    """The cache directory: ``cache_dir``, else ``$FLASHSCENIC_CACHE``, else ``./flashscenic_data``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return bool(offline)
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise InputError(f"{OFFLINE_ENV}={value!r} is not understood; use 1 (offline) or 0")


def _check_base_url(url: str, what: str) -> str:
    scheme = urllib.parse.urlsplit(str(url)).scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(f"{what} must be an http:// or https:// URL, got {str(url)!r}")
    return str(url) if str(url).endswith("/") else str(url) + "/"


def _resolve_base_url(base_url: str | None, default: str) -> str:
    if base_url is not None:
        return _check_base_url(base_url, "base_url")
    if os.environ.get(URL_ENV):
        return _check_base_url(os.environ[URL_ENV], URL_ENV)
    return default


# ----------------------------------------------------------------------------- public entry points


def download_data(species: str = DEFAULT_SPECIES, version: str = DEFAULT_VERSION,
                  datasource: str = DEFAULT_DATASOURCE, cache_dir=None, force: bool = False, *,
                  base_url: str | None = None, offline: bool | None = None, timeout: float = 60.0,
                  retries: int = 5, verbose: bool = True) -> DownloadedResources:
    """Download (or find in the cache) the ranking databases, motif annotation and TF list of a set.

    Every file is verified before it is used: against the SHA-1 the server publishes in
    ``<file>.sha1sum.txt`` (a mismatch deletes the file and raises), or, where the server
    publishes none, against the size it announced and its kind (with a warning): Feather
    magic bytes and schema for a database, the motif-table header for the annotation, one
    name per line for the TF list, and never an HTML page (a proxy's login page is refused
    and deleted). A file already in the
    cache is reused when its verification record still matches it, without any network
    access, so calling this at the start of every run costs a few ``stat`` calls.

    Parameters
    ----------
    species
        ``'human'``, ``'mouse'`` or ``'drosophila'`` (``list_available_resources()`` shows all).
    version
        Motif collection: ``'v10'`` (all three species) or ``'v9'`` (human, mouse).
    datasource
        Registry name; ``'scenic'`` is the Aertslab server. ``register_resource_set`` adds others.
    cache_dir
        Cache root; default ``$FLASHSCENIC_CACHE``, else ``./flashscenic_data``. Files land
        under ``<cache_dir>/<datasource>/<species>/<version>/``.
    force
        Download every file again, even when a verified copy is cached.
    base_url
        Replace the datasource's base URL (a mirror with the same layout); default
        ``$FLASHSCENIC_RESOURCE_URL``. Only http(s) URLs, and redirects only to http(s).
    offline
        Never use the network: return cached, verified files or fail naming what is
        missing. Default: ``$FLASHSCENIC_OFFLINE`` (``1`` means offline).
    timeout
        Seconds a connection or a read may stall before the attempt fails.
    retries
        Attempts after the first one, waiting 1, 2, 4, ... s between them; an attempt that
        received data resets the count (a download cut every few minutes still finishes).
    verbose
        Show a progress bar (size, rate) per downloaded file, on a terminal.

    Returns
    -------
    DownloadedResources
        Paths of the verified files, with species, version and datasource.

    Raises
    ------
    DownloadError
        The server or the network failed after the retries (a partial file is kept, and
        the next call resumes it, unless the server's file changed meanwhile);
        :class:`ChecksumError` when a file does not match its checksum, and a DownloadError
        when a file without one is not of its kind (either is deleted).
    ResourceNotFoundError
        Offline and a file is not in the cache.
    """
    resource_set = _find_set(species, version, datasource)
    offline = _offline(offline)
    if force and offline:
        raise InputError("force=True needs the network, but offline mode is on "
                         f"(offline=True or {OFFLINE_ENV}=1); drop one of them")
    if retries < 0 or timeout <= 0:
        raise InputError(f"retries must be >= 0 and timeout > 0, got retries={retries!r}, timeout={timeout!r}")
    directory = resource_set.directory(cache_dir)
    paths = {}
    for file in resource_set.files:
        url = resource_set.url(file, base_url) if not offline else None
        paths[file] = _ensure_file(file, directory / file.name, url, force=force, timeout=timeout,
                                   retries=retries, verbose=verbose)
    return DownloadedResources(
        species=resource_set.species, version=resource_set.version, datasource=resource_set.datasource,
        ranking_databases=tuple(paths[f] for f in resource_set.ranking_databases),
        motif_annotation=paths[resource_set.motif_annotation], tf_list=paths[resource_set.tf_list],
        directory=directory)


def cache_status(resource_set: ResourceSet, cache_dir=None) -> list[CachedFile]:
    """What the cache holds for each file of ``resource_set``; cheap (``stat`` only, no hashing).

    ``'verified'`` here means the verification record matches the file's size, mtime and
    inode; :func:`download_data` re-hashes a file whose record no longer matches.
    """
    directory = resource_set.directory(cache_dir)
    status = []
    for file in resource_set.files:
        path = directory / file.name
        partial = _partial_path(path)
        if path.is_file():
            state = "verified" if _record_matches(path) else "unverified"
            status.append(CachedFile(file, path, state, path.stat().st_size))
        elif partial.is_file():
            status.append(CachedFile(file, path, "partial", partial.stat().st_size))
        else:
            status.append(CachedFile(file, path, "missing", None))
    return status


# ----------------------------------------------------------------------------- one file


def _partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _partial_info_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_INFO_SUFFIX)


def _ensure_file(file: ResourceFile, path: Path, url: str | None, *, force: bool, timeout: float,
                 retries: int, verbose: bool) -> Path:
    """Return ``path`` once it holds a verified copy of ``file``; download it when needed.

    ``url`` None means offline. The fast path (a matching verification record) takes no
    lock, so a read-only shared cache works; everything that writes happens under the
    file's lock, and re-checks first, because another process may have just finished it.
    """
    if not force and _record_matches(path):
        return path
    if url is None:
        if path.is_file() and _verify_local(path, file.kind):
            return path
        raise ResourceNotFoundError(_offline_message(file, path))
    from filelock import FileLock, Timeout

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path.with_name(path.name + LOCK_SUFFIX)))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("waiting for another process that is downloading %s", path)
            lock.acquire()
    except OSError as error:
        raise DownloadError(f"cannot write to the cache directory {path.parent} ({error}); pass a writable "
                            f"cache_dir or set {CACHE_ENV}") from None
    try:
        if force:
            for stale in (path, _record_path(path), _checksum_path(path), _partial_path(path), _partial_info_path(path)):
                stale.unlink(missing_ok=True)
        elif _record_matches(path) or (path.is_file() and _verify_local(path, file.kind)):
            return path
        opener = _opener()
        expected = _fetch_checksum(opener, url, path, timeout, retries)
        if path.is_file():  # present but never verified (copied in by hand, or its record was lost)
            if expected is not None and _sha1_of(path) == expected:
                _write_record(path, url, expected, "sha1sum")
                return path
            logger.warning("%s is in the cache but unverified; downloading it again", path)
            path.unlink()
        sha1, size, checked = _download(opener, url, path, file.kind, expected, timeout, retries, verbose)
        if expected is not None:
            with atomic_path(_checksum_path(path)) as tmp:
                tmp.write_text(f"{expected}  {path.name}\n")
        _write_record(path, url, sha1, checked, content_checked=checked != "sha1sum")
    finally:
        lock.release()
    logger.info("downloaded and verified %s (%s)", path, format_size(size))
    return path


def _offline_message(file: ResourceFile, path: Path) -> str:
    if path.is_file():
        what = f"{path} is present but unverified (no {RECORD_SUFFIX} record matches it and no {CHECKSUM_SUFFIX} beside it)"
    elif _partial_path(path).is_file():
        what = f"{file.name} was only partly downloaded ({_partial_path(path)})"
    else:
        what = f"{file.name} is not in the cache ({path.parent})"
    return (f"offline mode ({OFFLINE_ENV}=1 or offline=True): {what}; download it where the network is "
            f"available (flashscenic download) and copy the cache directory here, or unset {OFFLINE_ENV}")


def _download(opener, url: str, path: Path, kind: str, expected: str | None, timeout: float, retries: int,
              verbose: bool) -> tuple[str, int, str]:
    """Fetch ``url`` into ``path`` through ``<path>.partial``; return (sha1, size, how it was checked).

    Resumes an existing ``.partial`` with ``Range`` and ``If-Range`` (the ETag or
    Last-Modified stored when it was started), so a server whose file changed answers 200
    and the download starts over. Each attempt resumes from the size on disk, and the SHA-1
    is computed from the finished file, never from the stream: what is checked is what is kept.
    A ``text/html`` answer is refused whatever the checksum: no resource is a web page.
    """
    from tqdm.auto import tqdm

    partial, info = _partial_path(path), _partial_info_path(path)
    validator = _read_validator(info) if partial.is_file() else None
    if partial.is_file() and validator is None and expected is None:
        logger.info("%s: nothing tells which version of the file it began from; starting over", partial)
        _discard(partial, info)
    total = None
    failures, last_error = 0, None
    while True:
        received = 0
        have = partial.stat().st_size if partial.is_file() else 0
        try:
            headers = {"User-Agent": _user_agent()}
            if have:
                logger.info("resuming %s from byte %d", partial, have)
                headers["Range"] = f"bytes={have}-"
                if validator is not None:
                    headers["If-Range"] = validator
            with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
                content_type = response.headers.get("Content-Type") or ""
                if content_type.split(";")[0].strip().lower() == "text/html":
                    _discard(partial, info)
                    raise DownloadError(
                        f"{path.name}: {url} answered with an HTML page (Content-Type {content_type!r}) instead of "
                        f"the file, as a proxy's or mirror's login or error page does; refused, nothing was kept: "
                        f"check the URL or the mirror ({URL_ENV})")
                if response.status == 206:
                    start, total = _content_range(response.headers.get("Content-Range"), url)
                    now = _validator(response.headers)
                    if start != have or (validator is not None and now is not None and now != validator):
                        _discard(partial, info)  # not the range, or not the version, we asked for
                        validator = None
                        raise _Restart(f"the server resumed at byte {start} of version {now} instead")
                else:  # 200: the whole file (no Range sent, the file changed, or the server ignores Range)
                    if have:
                        logger.info("%s answered with the whole file instead of resuming at byte %d; "
                                    "starting over", url, have)
                        _discard(partial, info)
                        have = 0
                    validator = _validator(response.headers)
                    _write_validator(info, validator)
                    length = response.headers.get("Content-Length")
                    total = int(length) if length is not None else None
                if total is not None:
                    _check_disk_space(partial.parent, total - have, url)
                with open(partial, "ab") as out, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=path.name, disable=None if verbose else True, leave=False) as bar:
                    while True:
                        chunk = response.read(_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            size = partial.stat().st_size
            if total is not None and size < total:
                raise http.client.IncompleteRead(b"", total - size)
            if total is not None and size > total:
                raise DownloadError(f"{url}: {size} bytes on disk but the server announced {total}")
            break
        except DownloadError:
            raise
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # our partial is at (or past) the end: start over
                logger.info("%s: range not satisfiable from byte %d; starting over", url, have)
                _discard(partial, info)
                validator = None
                last_error = error
            elif error.code in _RETRY_STATUS:
                last_error = error
            else:
                raise DownloadError(_http_message(url, error)) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, _Restart) as error:
            last_error = error  # timeouts, refused or reset connections, cut transfers
        failures = 0 if received else failures + 1
        if failures > retries:
            kept = partial.stat().st_size if partial.is_file() else 0
            partial_note = (f"; the {format_size(kept)} received are kept in {partial} and the next call "
                            "resumes from there") if kept else ""
            raise DownloadError(f"could not download {url} after {failures} attempt(s) without progress: "
                                f"{_describe(last_error)}{partial_note}; check the network or use a mirror "
                                f"({URL_ENV})")
        wait = min(_BACKOFF_SECONDS * 2 ** max(failures - 1, 0), _BACKOFF_MAX_SECONDS)
        logger.warning("download of %s interrupted (%s); retrying in %.3g s", url, _describe(last_error), wait)
        time.sleep(wait)

    sha1 = _sha1_of(partial)
    if expected is not None:
        if sha1 != expected:
            _discard(partial, info)
            raise ChecksumError(
                f"{url} does not match its published SHA-1 (expected {expected}, got {sha1}); the download "
                f"was deleted. Run again to download it anew; if it fails again, the server's file or its "
                f"{CHECKSUM_SUFFIX} is wrong (try a mirror with {URL_ENV})")
        checked = "sha1sum"
    else:
        problem = _content_problem(partial, kind)
        if problem is not None:
            _discard(partial, info)
            raise DownloadError(
                f"{path.name}: refused, what {url} sent is not a {_KIND_LABELS[kind]}: {problem}; it was deleted. "
                f"A proxy or mirror may have answered with a login or error page: check the URL or the mirror "
                f"({URL_ENV})")
        if total is not None:
            checked = "size"
        else:
            warnings.warn(f"{url} announced no size and has no {CHECKSUM_SUFFIX}: only its kind "
                          f"({_KIND_LABELS[kind]}) could be checked", stacklevel=4)
            checked = "kind"
    info.unlink(missing_ok=True)
    os.replace(partial, path)
    return sha1, size, checked


def _discard(partial: Path, info: Path) -> None:
    """Delete a partial download and the server version it was started from."""
    partial.unlink(missing_ok=True)
    info.unlink(missing_ok=True)


def _validator(headers) -> str | None:
    """What ``If-Range`` can name this version of the file by: a strong ETag, else Last-Modified."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):  # a weak ETag may not be used with If-Range (RFC 9110)
        return etag
    return headers.get("Last-Modified") or None


def _write_validator(info: Path, validator: str | None) -> None:
    if validator is None:
        info.unlink(missing_ok=True)
        return
    with atomic_path(info) as tmp:
        tmp.write_text(json.dumps({"validator": validator}) + "\n")


def _read_validator(info: Path) -> str | None:
    try:
        value = json.loads(info.read_text()).get("validator")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _content_problem(path: Path, kind: str) -> str | None:
    """Why ``path`` is not a file of ``kind``, or None: the check of a file that has no published checksum.

    Cheap by design (the schema of a database, the first MiB of a text file): it refuses what a
    misconfigured mirror or a proxy's login page leaves, it does not prove the content right.
    """
    if kind == "ranking_database":
        from .rankdb import check_database_file

        try:
            check_database_file(path)
        except InputError as error:
            return str(error).replace(f"{str(path)!r}", "the file")
        return None
    with open(path, "rb") as f:
        head = f.read(_CHUNK)
    try:  # a character cut by the end of the first MiB is not an error
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=len(head) < _CHUNK)
    except UnicodeDecodeError as error:
        return f"not UTF-8 text (byte 0x{head[error.start]:02x} at offset {error.start})"
    if re.match(r"\s*<", text):
        return "it is an HTML or XML page"
    lines = text.splitlines()[: -1 if len(head) == _CHUNK else None]  # the last line read may be cut
    if kind == "motif_annotation":
        fields = lines[0].split("\t") if lines else []
        if fields[:1] != ["#motif_id"] or "gene_name" not in fields:
            return f"its first line is not a motif table header (#motif_id ... gene_name ...): {text[:60]!r}"
        return None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    bad = next((name for name in names if re.search(r"[\s<>]", name)), None)
    if bad is not None:
        return f"a TF list has one name per line, but a line reads {bad[:60]!r}"
    return None if names else "it holds no TF names"


def _fetch_checksum(opener, url: str, path: Path, timeout: float, retries: int) -> str | None:
    """The SHA-1 published in ``<url>.sha1sum.txt``, or None (with a warning) when there is none."""
    checksum_url = url + CHECKSUM_SUFFIX
    failures = 0
    while True:
        try:
            request = urllib.request.Request(checksum_url, headers={"User-Agent": _user_agent()})
            with opener.open(request, timeout=timeout) as response:
                text = response.read(1 << 16).decode("utf-8", "replace")
                html = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower() == "text/html"
            break
        except DownloadError:
            raise
        except urllib.error.HTTPError as error:
            if error.code in (404, 410):
                warnings.warn(f"the server publishes no checksum for {path.name} ({checksum_url} answered "
                              f"{error.code}); only its size will be checked", stacklevel=4)
                return None
            if error.code not in _RETRY_STATUS:
                raise DownloadError(_http_message(checksum_url, error)) from None
            last_error = error
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            last_error = error
        failures += 1
        if failures > retries:
            raise DownloadError(f"could not fetch the checksum {checksum_url} after {failures} attempt(s): "
                                f"{_describe(last_error)}; check the network or use a mirror ({URL_ENV})")
        time.sleep(min(_BACKOFF_SECONDS * 2 ** (failures - 1), _BACKOFF_MAX_SECONDS))
    if html:  # a login or error page: whatever hex it holds is no checksum
        warnings.warn(f"{checksum_url} answered with an HTML page, not a checksum; only the size and kind of "
                      f"{path.name} will be checked", stacklevel=4)
        return None
    digest = _parse_checksum(text, path.name)
    if digest is None:
        warnings.warn(f"{checksum_url} holds no SHA-1 (it starts {text[:40]!r}); only the size of "
                      f"{path.name} will be checked", stacklevel=4)
    return digest


def _parse_checksum(text: str, name: str) -> str | None:
    """The SHA-1 of ``name`` in sha1sum's format (``<hex>  <file>``); a lone hash counts too."""
    found = []
    for line in text.splitlines():
        parts = line.strip().split()
        if parts and re.fullmatch(r"[0-9a-fA-F]{40}", parts[0]):
            listed = parts[1].lstrip("*").rsplit("/", 1)[-1] if len(parts) > 1 else None
            found.append((listed, parts[0].lower()))
    for listed, digest in found:
        if listed == name:
            return digest
    return found[0][1] if found else None


def _content_range(value: str | None, url: str) -> tuple[int, int | None]:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        raise DownloadError(f"{url} answered 206 with an unreadable Content-Range {value!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _check_disk_space(directory: Path, needed: int, url: str) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise DownloadError(f"not enough disk space for {url}: {format_size(needed)} needed, "
                            f"{format_size(free)} free in {directory}; free some space or pass another cache_dir")


# ----------------------------------------------------------------------------- verification records


def _write_record(path: Path, url: str | None, sha1: str, checked: str, content_checked: bool = False) -> None:
    """Write ``<path>.verified.json``: the SHA-1 of ``path`` tied to its size, mtime and inode.

    ``content_checked``: a file without a published checksum passed the check of its kind;
    only then does a record without ``checked: sha1sum`` vouch for the file.
    """
    stat = path.stat()
    record = {"file": path.name, "url": url, "sha1": sha1, "checked": checked, "size": stat.st_size,
              "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    if content_checked:
        record["content_checked"] = True
    try:
        with atomic_path(_record_path(path)) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
    except OSError as error:  # a read-only cache: the file is still verified for this run
        logger.info("could not record the verification of %s (%s)", path, error)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(_record_path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("sha1"), str) else None


def _record_matches(path: Path) -> bool:
    """Is ``path`` present with a verification record that still matches it (stat only)?

    A record of a file without a checksum counts only if the file's kind was checked: older
    records ("checked": "size" alone) may vouch for a proxy's HTML page.
    """
    record = _read_record(path)
    if record is None or (record.get("checked") != "sha1sum" and record.get("content_checked") is not True):
        return False
    try:
        stat = path.stat()
    except OSError:
        return False
    return (record.get("size"), record.get("mtime_ns"), record.get("inode")) == (
        stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _verify_local(path: Path, kind: str) -> bool:
    """Verify ``path`` without the network: against its record's SHA-1 or a ``.sha1sum.txt`` beside it.

    Used when the record no longer matches the file's stat (the cache was copied without
    keeping times, say) or the files were put in the cache by hand with their checksums.
    A file downloaded without a published checksum is checked against our own hash of it
    and, again, by its ``kind``. A file that fails is left alone here: the caller downloads
    it again or reports it.
    """
    record = _read_record(path)
    expected = record["sha1"] if record and record.get("checked") == "sha1sum" else None
    if expected is None and _checksum_path(path).is_file():
        expected = _parse_checksum(_checksum_path(path).read_text(errors="replace"), path.name)
    own = expected is None
    if own:
        if not record or record.get("size") != path.stat().st_size:
            return False
        problem = _content_problem(path, kind)
        if problem is not None:
            logger.warning("%s is not a %s (%s); not trusted", path, _KIND_LABELS[kind], problem)
            return False
        expected = record["sha1"]
    actual = _sha1_of(path)
    if actual != expected:
        logger.warning("%s does not match its recorded SHA-1 (expected %s, got %s)", path, expected, actual)
        return False
    _write_record(path, record.get("url") if record else None, actual,
                  record.get("checked", "sha1sum") if own else "sha1sum", content_checked=own)
    return True


def _sha1_of(path: Path) -> str:
    hasher = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


# ----------------------------------------------------------------------------- HTTP plumbing


class _Restart(Exception):
    """The server answered a different range than asked: retry from byte 0."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): never to ``file:``, ``ftp:`` or anything else."""

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location is not None:
            target = urllib.parse.urljoin(req.full_url, location)
            if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
                raise DownloadError(f"{req.full_url} redirects to {target!r}; only redirects to http(s) are "
                                    "followed (ask the mirror's maintainer, or use another mirror)")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener() -> urllib.request.OpenerDirector:
    """An opener that speaks only http(s): no file:, ftp: or data: handlers at all."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _HttpOnlyRedirects(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _user_agent() -> str:
    from . import __version__

    return f"flashscenic/{__version__}"


def _http_message(url: str, error: urllib.error.HTTPError) -> str:
    if error.code in (404, 410):
        return (f"{url} was not found on the server (HTTP {error.code}); check the species and version "
                f"(list_available_resources()) and, when using a mirror ({URL_ENV}), that it has this file")
    if error.code in (401, 403):
        return f"{url} is not accessible (HTTP {error.code} {error.reason}); check the URL or the mirror's permissions"
    return f"{url} failed with HTTP {error.code} {error.reason}"


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    reason = getattr(error, "reason", None)
    if isinstance(error, (socket.timeout, TimeoutError)) or isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out (no data within the timeout)"
    if isinstance(error, http.client.IncompleteRead):
        return "connection closed before the end of the file"
    return f"{type(error).__name__}: {reason or error}"


def format_size(n: int | None) -> str:
    """Bytes for people: 1.5 GiB; "size unknown" for None."""
    if n is None:
        return "size unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


for _set in _aertslab_sets():
    register_resource_set(_set)
del _set
