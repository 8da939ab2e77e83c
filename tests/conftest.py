"""Suite-wide settings: no test reaches anything but this machine's loopback.

The network guard is installed when pytest starts (so collection and module- or
session-scoped fixtures are covered too) and removed when it ends. In the test process,
``socket.socket.connect`` / ``connect_ex``, ``socket.create_connection`` and
``socket.getaddrinfo`` accept only 127.0.0.1, ``localhost`` and ::1 (and local families
such as Unix sockets); any other address raises :class:`NetworkBlockedError` at once,
before a packet is sent. Every refused attempt is also recorded, and a test during which
one was refused fails at teardown even if the code under test swallowed the error (a
fallback that quietly works offline must not hide that it tried the network).

Subprocesses (Dask workers, the ``cluster/local`` recipe) are not patched; they are given
127.0.0.1 addresses by the tests themselves.
"""

from __future__ import annotations

import errno
import socket

import pytest

pytest_plugins = ["pytester"]  # tests/test_network_guard.py runs a test under the guard

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "ip6-localhost", "ip6-loopback"})


class NetworkBlockedError(OSError):
    """A test tried to reach an address other than the loopback."""


class _Guard:
    def __init__(self):
        self.refused: list[str] = []
        self.originals: dict | None = None

    def _check_host(self, host, what: str) -> None:
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if host is None or host in LOOPBACK:
            return
        if isinstance(host, str) and host.lower() in LOOPBACK:
            return
        self.refused.append(f"{what} {host!r}")
        raise NetworkBlockedError(errno.ENETUNREACH,
                                  f"a test tried to reach {host!r} ({what}): tests may only use 127.0.0.1, "
                                  "localhost or ::1")

    def _check_address(self, family, address, what: str) -> None:
        if family not in (socket.AF_INET, socket.AF_INET6):
            return  # Unix sockets, netlink, ...: local by nature
        host = address[0] if isinstance(address, tuple) and address else address
        self._check_host(host, what)

    def install(self) -> None:
        if self.originals is not None:
            return
        originals = self.originals = {
            "connect": socket.socket.connect,
            "connect_ex": socket.socket.connect_ex,
            "create_connection": socket.create_connection,
            "getaddrinfo": socket.getaddrinfo,
        }
        guard = self

        def connect(sock, address):
            guard._check_address(sock.family, address, "connect")
            return originals["connect"](sock, address)

        def connect_ex(sock, address):
            guard._check_address(sock.family, address, "connect_ex")
            return originals["connect_ex"](sock, address)

        def create_connection(address, *args, **kwargs):
            guard._check_host(address[0], "create_connection")
            return originals["create_connection"](address, *args, **kwargs)

        def getaddrinfo(host, *args, **kwargs):
            guard._check_host(host, "getaddrinfo")
            return originals["getaddrinfo"](host, *args, **kwargs)

        socket.socket.connect = connect
        socket.socket.connect_ex = connect_ex
        socket.create_connection = create_connection
        socket.getaddrinfo = getaddrinfo

    def uninstall(self) -> None:
        if self.originals is None:
            return
        socket.socket.connect = self.originals["connect"]
        socket.socket.connect_ex = self.originals["connect_ex"]
        socket.create_connection = self.originals["create_connection"]
        socket.getaddrinfo = self.originals["getaddrinfo"]
        self.originals = None


_GUARD = _Guard()


def pytest_configure(config):
    _GUARD.install()


def pytest_unconfigure(config):
    _GUARD.uninstall()


@pytest.fixture
def refused_connections() -> list[str]:
    """The attempts the network guard refused during this test (a test of the guard clears it)."""
    return _GUARD.refused


@pytest.fixture(autouse=True)
def _no_network_access():
    """Fail a test that tried to reach the network, even if its code caught the refusal."""
    _GUARD.refused.clear()
    yield
    refused, _GUARD.refused[:] = list(_GUARD.refused), []
    if refused:
        pytest.fail(f"the test tried to reach the network ({len(refused)} attempt(s) refused): "
                    + "; ".join(refused[:5]), pytrace=False)


@pytest.fixture
def one_torch_thread():
    """torch's threads spin-wait: on a busy 2-core machine, training or tiny batches with 2 threads
    run many times slower than with 1."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
