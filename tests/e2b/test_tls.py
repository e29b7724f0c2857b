"""The SDK's own URLs over TLS: with `E2B_DOMAIN` set and no `E2B_API_URL`, the SDK
speaks `https://api.DOMAIN`, `https://49983-ID.DOMAIN` (envd) and
`https://PORT-ID.DOMAIN`, checking the certificate. The daemon serves them all on one
TLS listener with a self-signed certificate for `warren.test` and `*.warren.test`, which
the SDK is told to trust (`SSL_CERT_FILE`).

The names resolve nowhere: the SDK reaches them through an HTTP CONNECT proxy this
module runs on loopback (the SDK's `proxy` option), which sends every `*.warren.test:443`
to the daemon's listener. TLS is end to end between the SDK and the daemon, with the
name the SDK asked for.
"""

import asyncio
import os
import select
import socket
import ssl
import threading
import time

import pytest
from e2b import AsyncSandbox, Sandbox

from conftest import SDK_ENV, Daemon, finish, restored_env, use

DOMAIN = "warren.test"


class ConnectProxy:
    """CONNECT `*.warren.test:443` → the daemon's TLS port; anything else is refused."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.names = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(c,), daemon=True).start()

    def _tunnel(self, c: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 8192:
            chunk = c.recv(4096)
            if not chunk:
                c.close()
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode()
        method, target, _ = line.split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or not host.endswith("." + DOMAIN) or port != "443":
            c.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            c.close()
            return
        self.names.append(host)
        up = socket.create_connection(("127.0.0.1", self.target))
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pair = {c: up, up: c}
        try:
            while True:
                ready, _, _ = select.select(list(pair), [], [], 60)
                if not ready:
                    return
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    pair[s].sendall(data)
        except OSError:
            pass
        finally:
            c.close()
            up.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def tls_daemon():
    if os.geteuid() != 0:
        pytest.skip("SKIPPED: the E2B tests make real sandboxes and need root")
    with restored_env(*SDK_ENV):
        d = Daemon(base=False, tls=DOMAIN)
        proxy = ConnectProxy(d.port)
        use(d)
        # The SDK builds its URLs from the domain alone, and trusts only this certificate.
        for k in ("E2B_API_URL", "E2B_SANDBOX_URL"):
            os.environ.pop(k, None)
        os.environ["E2B_DOMAIN"] = DOMAIN
        os.environ["SSL_CERT_FILE"] = d.cert
        try:
            yield d, proxy
        finally:
            proxy.close()
            finish(d)


def _https_get(proxy: ConnectProxy, cert: str, host: str, path: str, headers=None):
    """GET https://HOST/PATH through the proxy, checking the certificate for HOST."""
    import http.client

    ctx = ssl.create_default_context(cafile=cert)
    c = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=30)
    c.set_tunnel(host, 443)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    out = (r.status, r.read().decode(errors="replace"))
    c.close()
    return out


def test_the_sdks_own_https_urls(tls_daemon):
    d, proxy = tls_daemon
    url = f"http://127.0.0.1:{proxy.port}"
    s = Sandbox.create(timeout=120, proxy=url)
    try:
        assert s.commands.run("echo over tls").stdout == "over tls\n"
        s.files.write("/tmp/note", "kept")
        assert s.files.read("/tmp/note") == "kept"
        # Control plane, envd and a port, each under its own name.
        assert f"api.{DOMAIN}" in proxy.names
        assert f"49983-{s.sandbox_id}.{DOMAIN}" in proxy.names
        from test_sync import _start_port_server

        _start_port_server(s, 8080)
        host = s.get_host(8080)
        assert host == f"8080-{s.sandbox_id}.{DOMAIN}"
        status, body = _https_get(proxy, d.cert, host, "/over-tls")
        assert status == 200, body
        # A signed download URL is an https URL of the domain that works as it is.
        link = s.download_url("/tmp/note", use_signature_expiration=60)
        assert link.startswith(f"https://49983-{s.sandbox_id}.{DOMAIN}/"), link
        status, body = _https_get(proxy, d.cert, link.split("/")[2], "/" + link.split("/", 3)[3])
        assert (status, body) == (200, "kept")
    finally:
        s.kill()


def test_a_certificate_for_another_name_is_refused(tls_daemon):
    """The listener's certificate names the domain: a client checking another name
    fails the handshake rather than talking."""
    d, proxy = tls_daemon
    ctx = ssl.create_default_context(cafile=d.cert)
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname="api.example.com")
    raw.close()
    # Plain HTTP on the TLS port gets no answer from the API.
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    raw.sendall(b"GET /health HTTP/1.1\r\nHost: api.warren.test\r\n\r\n")
    raw.settimeout(10)
    try:
        got = raw.recv(100)
    except OSError:
        got = b""
    assert not got.startswith(b"HTTP/1.1 200"), got
    raw.close()


def test_the_sdks_own_https_urls_async(tls_daemon):
    d, proxy = tls_daemon
    url = f"http://127.0.0.1:{proxy.port}"

    async def main():
        s = await AsyncSandbox.create(timeout=120, proxy=url)
        try:
            out = await s.commands.run("echo async over tls")
            assert out.stdout == "async over tls\n"
            await s.files.write("/tmp/a", "b")
            assert await s.files.read("/tmp/a") == "b"
        finally:
            await s.kill()

    t = time.time()
    asyncio.run(main())
    assert time.time() - t < 60
