"""The suite-wide network guard (tests/conftest.py): loopback works, anything else is refused."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

OUTSIDE = [("93.184.215.14", 80), ("8.8.8.8", 53), ("example.com", 443), ("10.0.0.1", 22)]


@pytest.mark.parametrize("host, port", OUTSIDE)
def test_an_outside_address_is_refused_at_connect(host, port, refused_connections):
    with pytest.raises(OSError, match="tests may only use 127.0.0.1, localhost or ::1") as tcp:
        socket.create_connection((host, port), timeout=1)
    assert type(tcp.value).__name__ == "NetworkBlockedError"
    family = socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as udp:  # even a UDP "connect" (no packet) is refused
        with pytest.raises(OSError, match=f"reach '{host}'"):
            udp.connect((host, port))
        with pytest.raises(OSError, match=f"reach '{host}'"):
            udp.connect_ex((host, port))
    with pytest.raises(OSError, match=f"reach '{host}'"):
        socket.getaddrinfo(host, port)
    with pytest.raises(urllib.error.URLError, match="tests may only use 127.0.0.1"):
        urllib.request.urlopen(f"http://{host}:{port}/", timeout=1)
    assert len(refused_connections) >= 5 and all(repr(host) in r for r in refused_connections)
    refused_connections.clear()  # refused as it should be: this test does not fail at teardown


def _serve_once(server: socket.socket) -> None:
    connection, _ = server.accept()
    with connection:
        connection.sendall(connection.recv(16).upper())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_loopback_works(host, refused_connections):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        thread = threading.Thread(target=_serve_once, args=(server,))
        thread.start()
        with socket.create_connection((host, port), timeout=10) as client:
            client.sendall(b"ping")
            assert client.recv(16) == b"PING"
        thread.join(10)
    assert socket.getaddrinfo(host, port)
    assert refused_connections == []


def test_ipv6_loopback_works(refused_connections):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    with server:
        server.listen(1)
        port = server.getsockname()[1]
        thread = threading.Thread(target=_serve_once, args=(server,))
        thread.start()
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            assert client.connect_ex(("::1", port)) == 0
            client.sendall(b"pong")
            assert client.recv(16) == b"PONG"
        thread.join(10)
    assert refused_connections == []


def test_a_swallowed_refusal_still_fails_the_test(pytester):
    """A test whose code catches the refusal (an offline fallback) fails at teardown anyway."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_quiet="""
        import socket

        def test_quiet():
            try:
                socket.create_connection(("192.0.2.1", 80), timeout=1)
            except OSError:
                pass  # "offline? never mind"
    """)
    result = pytester.runpytest_inprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the test tried to reach the network (1 attempt(s) refused): create_connection "
                                 "'192.0.2.1'*"])
