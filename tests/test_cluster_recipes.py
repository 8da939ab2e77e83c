"""The cluster/ recipes: TLS certificates and what a TLS scheduler accepts, the local
start/stop scripts, the sbatch script's wait for its scheduler. Everything on 127.0.0.1."""

from __future__ import annotations

import json
import operator
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flashscenic.distributed import start_executor

REPO = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).parent / "dask"
ROLES = ("scheduler", "worker", "client")

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not DASK.exists(), reason="no dask command beside this Python")]


def _make_certificates(folder: Path) -> Path:
    made = subprocess.run([str(REPO / "cluster/tls/make-certificates.sh"), str(folder)], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return folder / "dask-tls"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """make-certificates.sh's output folder: ca/ (the authority) and dask-tls/ (for the nodes)."""
    folder = tmp_path_factory.mktemp("certs")
    _make_certificates(folder)
    return folder


def _dask_config(certs: Path, folder: Path) -> Path:
    """cluster/tls/dask-tls.yaml with its paths pointing at certs (a dask-tls folder)."""
    folder.mkdir()
    (folder / "dask-tls.yaml").write_text((REPO / "cluster/tls/dask-tls.yaml").read_text()
                                          .replace("/secure/dask-tls", str(certs)))
    return folder


def _security(certs: Path, roles=("client",)):
    """A Security with the CA of certs and the pairs of the given roles, TLS required."""
    from distributed import Security

    pairs = {f"tls_{role}_{part}": str(certs / f"{role}.{ext}") for role in roles
             for part, ext in (("cert", "pem"), ("key", "key"))}
    return Security(tls_ca_file=str(certs / "ca.pem"), require_encryption=True, **pairs)


def test_the_ca_key_stays_out_of_the_folder_for_the_nodes(certificates):
    nodes, ca = certificates / "dask-tls", certificates / "ca"
    assert sorted(p.name for p in nodes.iterdir()) == sorted(
        ["ca.pem"] + [f"{role}.{ext}" for role in ROLES for ext in ("pem", "key")])
    ca_key = (ca / "ca.key").read_text()
    assert "PRIVATE KEY" in ca_key
    assert not any(ca_key.strip() in p.read_text() for p in nodes.iterdir())
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in [*nodes.iterdir(), *ca.iterdir()])
    assert len({(nodes / f"{role}.key").read_text() for role in ROLES}) == 3  # a key per role

    def verify(role, purpose):
        return subprocess.run(["openssl", "verify", "-CAfile", str(nodes / "ca.pem"), "-purpose", purpose,
                               str(nodes / f"{role}.pem")], capture_output=True, text=True).returncode == 0

    # Scheduler and workers listen and connect; the client's certificate cannot serve.
    assert all(verify(role, "sslclient") for role in ROLES)
    assert verify("scheduler", "sslserver") and verify("worker", "sslserver")
    assert not verify("client", "sslserver")


def _raw_tls(port: int, certs: Path, cert: Path | None = None, key: Path | None = None) -> bytes:
    """Connect with TLS (trusting the CA, presenting cert if given) and return what the server
    sends first: a Dask scheduler greets an accepted peer with its handshake message."""
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.recv(1024)


def _refused(port, certs, cert=None, key=None) -> bool:
    try:
        return _raw_tls(port, certs, cert, key) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_a_tls_scheduler_admits_only_certificates_of_its_ca(certificates, tmp_path):
    """The scheduler of the recipe (dask-tls.yaml, require-encryption) refuses plain TCP, a
    client without a certificate, a self-signed one and one of another CA; it admits the
    client certificate. A scheduler presenting the client's certificate is refused."""
    from distributed import Client, Security

    certs = certificates / "dask-tls"
    config = _dask_config(certs, tmp_path / "config")
    env = {**os.environ, "DASK_CONFIG": str(config)}
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(scheduler_file)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (scheduler_file.exists() and scheduler_file.stat().st_size):
            assert scheduler.poll() is None, scheduler.stderr.read()
            assert time.monotonic() < deadline, "no scheduler file after 30 s"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        port = int(address.rsplit(":", 1)[1])

        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:  # plain TCP
            plain.sendall(b"\x00" * 64)
            try:
                assert plain.recv(1024) == b""
            except ConnectionError:
                pass
        assert _refused(port, certs)  # no client certificate
        self_signed = tmp_path / "self-signed"
        self_signed.mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", "/CN=flashscenic-dask-client", "-keyout",
                        str(self_signed / "client.key"), "-out", str(self_signed / "client.pem")],
                       check=True, capture_output=True)
        assert _refused(port, certs, self_signed / "client.pem", self_signed / "client.key")
        other = _make_certificates(tmp_path / "other-ca")  # same layout, another authority
        assert _refused(port, certs, other / "client.pem", other / "client.key")
        # The raw probe sees the scheduler's greeting once the certificate is the CA's:
        assert _raw_tls(port, certs, certs / "client.pem", certs / "client.key")

        foreign = Security(tls_ca_file=str(certs / "ca.pem"), tls_client_cert=str(other / "client.pem"),
                           tls_client_key=str(other / "client.key"), require_encryption=True)
        with pytest.raises(OSError):
            Client(address, security=foreign, timeout=2)
        with Client(address, security=_security(certs), timeout=10) as client:
            assert client.scheduler_info()["address"] == address
    finally:
        scheduler.send_signal(signal.SIGTERM)
        scheduler.wait(timeout=30)

    # The client's key cannot act as a scheduler (or a worker): its certificate is not for servers.
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve():
            connection, _ = listener.accept()
            try:
                server_context.wrap_socket(connection, server_side=True).close()
            except (ssl.SSLError, OSError):
                connection.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate purpose"):
            _raw_tls(listener.getsockname()[1], certs, certs / "client.pem", certs / "client.key")
        thread.join(timeout=10)


def test_tls_from_the_recipe_for_an_external_and_an_embedded_cluster(certificates, tmp_path):
    """local/start.sh with dask-tls.yaml installed: scheduler and workers on tls:// with their own
    certificates, flashscenic's client with the client's; stop.sh stops them. Then the embedded
    cluster with the three role certificates."""
    certs = certificates / "dask-tls"
    env = {**os.environ, "DASK": str(DASK), "PYTHON": sys.executable,
           "DASK_CONFIG": str(_dask_config(certs, tmp_path / "config"))}
    directory = tmp_path / "cluster"
    try:
        done = subprocess.run([str(REPO / "cluster/local/start.sh"), "--dir", str(directory), "--port", "0",
                               "--dashboard-port", "none", "--workers", "1"], env=env, capture_output=True,
                              text=True, timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr
        scheduler_pid = int((directory / "scheduler.pid").read_text().split()[0])
        executor = start_executor(scheduler_file=directory / "scheduler.json", security=_security(certs),
                                  verbose=False)
        try:
            assert executor.client.scheduler.address.startswith("tls://127.0.0.1:")
            assert all(address.startswith("tls://") for address in executor._workers())
            # (an external scheduler unpickles the tasks: their functions must be importable there)
            assert executor.map(operator.add, [(2, 4), (1, 1)], description="tls", verbose=False) == [6, 2]
        finally:
            executor.close()
    finally:
        stopped = subprocess.run([str(REPO / "cluster/local/stop.sh"), "--dir", str(directory)], env=env,
                                 capture_output=True, text=True, timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    assert not (directory / "scheduler.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(scheduler_pid, 0)

    everything = _security(certs, ROLES)
    executor = start_executor(n_workers=1, security=everything, dashboard_address=None, verbose=False)
    try:
        assert executor.client.scheduler.address.startswith("tls://127.0.0.1:")
        assert all(address.startswith("tls://") for address in executor._workers())
    finally:
        executor.close()


@pytest.mark.parametrize("recorded", ["another start time", "a sleep, not dask"])
def test_stop_leaves_alone_a_process_that_took_a_recorded_pid(tmp_path, recorded):
    """A pid file whose pid now belongs to another process (here a `sleep` in a session of its
    own, as start.sh's processes are): stop.sh says so and kills nothing."""
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = subprocess.run(["ps", "-o", "lstart=", "-p", str(sleeper.pid)], capture_output=True,
                                 text=True, check=True).stdout.strip()
        if recorded == "another start time":
            started = "Thu Jan  1 00:00:00 1970"
        directory = tmp_path / "cluster"
        directory.mkdir()
        (directory / "scheduler.pid").write_text(f"{sleeper.pid}\n{started}\n")
        stopped = subprocess.run([str(REPO / "cluster/local/stop.sh"), "--dir", str(directory)],
                                 capture_output=True, text=True, timeout=30)
        assert stopped.returncode == 0, stopped.stderr
        assert f"pid {sleeper.pid}" in stopped.stderr and "not stopping it" in stopped.stderr
        assert sleeper.poll() is None  # still running
        assert not (directory / "scheduler.pid").exists()  # the stale file is gone
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("scheduler, message", [
    ("echo 'scheduler: cannot bind' >&2; exit 1", "the scheduler exited before it was ready"),
    ("exec sleep 60", "the scheduler wrote no scheduler file in 2 s"),
])
def test_the_sbatch_script_does_not_wait_forever_for_its_scheduler(certificates, tmp_path, scheduler, message):
    """flashscenic.sbatch with a `dask` that dies or never writes its scheduler file: the job
    ends within SCHEDULER_TIMEOUT and says why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in [("dask", scheduler), ("hostname", "echo 127.0.0.1")]:
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7",
           "DASK_TLS": str(certificates / "dask-tls"), "SCHEDULER_TIMEOUT": "2"}
    start = time.monotonic()
    job = subprocess.run(["bash", str(REPO / "cluster/slurm/flashscenic.sbatch"), str(tmp_path / "store.zarr"),
                          str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=30)
    assert job.returncode == 1
    assert message in job.stderr, job.stderr
    assert time.monotonic() - start < 15
    if "exited" in message:
        assert "cannot bind" in job.stderr  # the scheduler's log is shown


def test_the_sbatch_script_needs_the_certificates(tmp_path):
    job = subprocess.run(["bash", str(REPO / "cluster/slurm/flashscenic.sbatch"), "store.zarr", str(tmp_path)],
                         env={**os.environ, "SLURM_JOB_ID": "7", "DASK_TLS": str(tmp_path / "none")},
                         capture_output=True, text=True, timeout=30)
    assert job.returncode == 1 and "make-certificates.sh" in job.stderr
