"""Egress rules as E2B's SDK sets them: `network={allow_out, deny_out, dns_servers}` on
create, `update_network` on a running sandbox, `allow_internet_access=False`.

No traffic leaves the host: the "internet" is a network namespace this module makes,
with a veth to the host and two addresses of a free /24 of 198.18.0.0/15 (the
benchmarking range), each serving ports 80, 443 and 8080. The server logs, per
connection, the port and local address it arrived on and the first bytes it got, so a
test can tell where a connection really went. Domain names are the daemon's own: it
runs in a mount namespace of its own whose /etc/hosts names them (allowed.test and
www.wild.test are the first address, other.test the second, sneaky.test the host's
loopback).
"""

import asyncio
import hashlib
import ipaddress
import os
import subprocess
import tempfile
import time

import pytest
from e2b import ALL_TRAFFIC, AsyncSandbox, Sandbox

from conftest import SDK_ENV, Daemon, finish, restored_env, use

PEER = r"""
import socket, sys, threading, time
log = open(sys.argv[1], "a", buffering=1)
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=answer, args=(c, port), daemon=True).start()
def answer(c, port):
    c.settimeout(5)
    try:
        data = c.recv(65536)
    except OSError:
        data = b""
    local = c.getsockname()[0]
    log.write(f"{port} {local} {data[:300]!r}\n")
    try:
        c.sendall(f"HTTP/1.0 200 OK\r\n\r\npeer {local}:{port}\n".encode())
        if b"/hold" in data:
            time.sleep(60)
    except OSError:
        pass
    c.close()
for p in (80, 443, 8080):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
threading.Event().wait()
"""

# Run inside a sandbox: each argument `http,IP,HOST[:PORT]` or `tls,IP,NAME` is tried
# and printed as `ARG => RESULT` (the first line of the answer, or the error).
PROBE = r"""
import socket, ssl, sys
def http(ip, port, host):
    try:
        s = socket.create_connection((ip, port), timeout=5)
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = s.recv(4096).decode(errors="replace")
        return data.splitlines()[0] if data else "EOF"
    except OSError as e:
        return f"ERR {e.__class__.__name__}"
def tls(ip, name):
    try:
        s = socket.create_connection((ip, 443), timeout=5)
        ctx = ssl.create_default_context()
        if not name:
            ctx.check_hostname = False
        t = ctx.wrap_socket(s, server_hostname=name or None, do_handshake_on_connect=False)
        try:
            t.do_handshake()
        except (ssl.SSLEOFError, ConnectionResetError):
            return "TLS closed"
        except ssl.SSLError as e:
            # A server answered, not in TLS (the peer speaks HTTP on 443).
            # Anything else: the handshake met the end of the connection.
            return "TLS answered" if e.reason == "WRONG_VERSION_NUMBER" else "TLS closed"
        except OSError as e:
            return f"ERR {e.__class__.__name__}"
        return "TLS ok"
    except OSError as e:
        return f"ERR {e.__class__.__name__}"
for a in sys.argv[1:]:
    kind, ip, x = a.split(",")
    if kind == "http":
        host, _, port = x.partition(":")
        print(a, "=>", http(ip, int(port or 80), host))
    else:
        print(a, "=>", tls(ip, x))
"""


def _sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 no address or route of the host touches."""
    used = []
    for line in _sh("ip", "-4", "-o", "addr").splitlines():
        used.append(ipaddress.ip_interface(line.split()[3]).network)
    for line in _sh("ip", "-4", "route").splitlines():
        dest = line.split()[0]
        if dest != "default":
            used.append(ipaddress.ip_network(dest, strict=False))
    for third in range(10, 250):
        net = ipaddress.ip_network(f"198.18.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    pytest.skip("SKIPPED: no free /24 in 198.18.0.0/15 for the egress peer")


@pytest.fixture(scope="module")
def peer():
    if os.geteuid() != 0:
        pytest.skip("SKIPPED: the egress tests make a network namespace and need root")
    net = _free_subnet()
    hosts = list(net.hosts())
    gw, a, b = str(hosts[0]), str(hosts[1]), str(hosts[2])
    tag = f"wtp{os.getpid() % 100000}"
    ns, here, there = f"{tag}-egress", f"{tag}h", f"{tag}p"
    work = tempfile.mkdtemp(prefix="wegress-", dir="/tmp")
    log = os.path.join(work, "peer.log")
    open(log, "w").close()
    server = None
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", ns)
        _sh("ip", "addr", "add", f"{gw}/24", "dev", here)
        _sh("ip", "link", "set", here, "up")
        for ip in (a, b):
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", there)
        _sh("ip", "-n", ns, "link", "set", there, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", PEER, log])
        for _ in range(100):
            if server.poll() is None and subprocess.run(
                ["ip", "netns", "exec", ns, "python3", "-c",
                 f"import socket; socket.create_connection(('{a}', 8080), timeout=1)"],
                capture_output=True,
            ).returncode == 0:
                break
            time.sleep(0.05)
        hosts_file = os.path.join(work, "hosts")
        with open("/etc/hosts") as f:
            base = f.read()
        with open(hosts_file, "w") as f:
            f.write(base)
            f.write(f"\n{a} allowed.test www.wild.test\n{b} other.test\n127.0.0.1 sneaky.test\n")
        yield {"a": a, "b": b, "gw": gw, "log": log, "hosts": hosts_file}
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["rm", "-rf", work])


@pytest.fixture(scope="module")
def edaemon(peer):
    with restored_env(*SDK_ENV):
        d = Daemon(hosts=peer["hosts"], base=False)
        use(d)
        try:
            yield d
        finally:
            finish(d)


def _probe(s, *cases: str) -> dict:
    out = s.commands.run("python3 -c \"$P\" " + " ".join(cases), envs={"P": PROBE}, timeout=60)
    return dict(line.split(" => ", 1) for line in out.stdout.splitlines())


def _arrivals(peer) -> list:
    with open(peer["log"]) as f:
        return f.read().splitlines()


def _table() -> str:
    """Warren's nftables table, as `nft` lists it (empty when there is none)."""
    r = subprocess.run(["nft", "list", "table", "inet", "warren"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else ""


def _chains(sandbox_id: str) -> str:
    """Every line of Warren's netfilter table that names the sandbox's link or its chains."""
    h = hashlib.sha256(sandbox_id.encode()).hexdigest()[:12]
    return "\n".join(l.strip() for l in _table().splitlines() if h in l)


def test_address_rules_allow_wins_over_deny(edaemon, peer):
    a, b = peer["a"], peer["b"]
    s = Sandbox.create(timeout=120, network={"deny_out": [ALL_TRAFFIC], "allow_out": [a]})
    try:
        r = _probe(s, f"http,{a},x:8080", f"http,{b},x:8080")
        assert r[f"http,{a},x:8080"] == "HTTP/1.0 200 OK"
        # Refused at once (a reset), not left to time out.
        assert r[f"http,{b},x:8080"] == "ERR ConnectionRefusedError"
        info = s.get_info()
        assert info.network["allow_out"] == [a]
        assert info.network["deny_out"] == [ALL_TRAFFIC]
        # Nothing of the host is reachable through an allowed rule either.
        r = _probe(s, f"http,{peer['gw']},x:8080")
        assert r[f"http,{peer['gw']},x:8080"].startswith("ERR"), r
        # Its rules: a chain of its own, reached from its link's name.
        h = hashlib.sha256(s.sandbox_id.encode()).hexdigest()[:12]
        held = _chains(s.sandbox_id)
        assert f"chain e_{h}" in held and f'"wrn{h}" : jump e_{h}' in held, held
    finally:
        s.kill()
    assert _chains(s.sandbox_id) == "", "the sandbox's rules outlived it"


def test_domain_rules_go_where_the_name_resolves(edaemon, peer):
    a, b = peer["a"], peer["b"]
    s = Sandbox.create(
        timeout=120,
        network={"deny_out": [ALL_TRAFFIC], "allow_out": ["allowed.test", "*.wild.test"]},
    )
    try:
        before = len(_arrivals(peer))
        cases = [
            f"http,{a},allowed.test",
            # Sent to the other address: it goes where the name resolves instead.
            f"http,{b},allowed.test",
            f"http,{b},www.wild.test",
            f"http,{b},wild.test",
            f"http,{b},other.test",
            # Allowed by name, but the name resolves to the host's loopback.
            f"http,{b},sneaky.test",
            f"tls,{b},allowed.test",
            f"tls,{b},other.test",
            # Other ports are judged by address alone.
            f"http,{b},allowed.test:8080",
            # No name at all (a raw address): judged by address, here denied.
            f"tls,{b},",
        ]
        r = _probe(s, *cases)
        assert r[f"http,{a},allowed.test"] == "HTTP/1.0 200 OK"
        assert r[f"http,{b},allowed.test"] == "HTTP/1.0 200 OK"
        assert r[f"http,{b},www.wild.test"] == "HTTP/1.0 200 OK"
        assert r[f"http,{b},wild.test"] == "HTTP/1.1 403 Forbidden"
        assert r[f"http,{b},other.test"] == "HTTP/1.1 403 Forbidden"
        assert r[f"http,{b},sneaky.test"] == "HTTP/1.1 403 Forbidden"
        assert r[f"tls,{b},allowed.test"] == "TLS answered"
        assert r[f"tls,{b},other.test"] == "TLS closed"
        assert r[f"http,{b},allowed.test:8080"] == "ERR ConnectionRefusedError"
        assert r[f"tls,{b},"] == "TLS closed"
        # No IPv6 to go around the rules with.
        v6 = s.commands.run(
            "python3 -c 'import socket\ntry:\n socket.create_connection((\"2001:db8::1\", 80), timeout=2)\n"
            "except OSError as e: print(type(e).__name__)'"
        ).stdout.strip()
        # Unreachable at once: the sandbox has no IPv6 route (nothing is sent).
        assert v6 == "OSError", v6
        # The proxy itself, dialled on the sandbox's gateway rather than redirected to:
        # dropped by the host before the proxy sees it.
        h = hashlib.sha256(s.sandbox_id.encode()).hexdigest()[:12]
        # The sandbox's own chain accepting its redirected connections: `p_<hash>`.
        chain = _table().split(f"chain p_{h} {{", 1)[1].split("}", 1)[0]
        port = chain.split("tcp dport ", 1)[1].split()[0]
        direct = s.commands.run(
            "python3 -c 'import socket, struct\n"
            "gw = [l.split()[2] for l in open(\"/proc/net/route\") if l.split()[1] == \"00000000\"][0]\n"
            "ip = socket.inet_ntoa(struct.pack(\"<I\", int(gw, 16)))\n"
            "try:\n socket.create_connection((ip, %s), timeout=2); print(\"open\")\n"
            "except socket.timeout: print(\"dropped\")\n"
            "except OSError as e: print(type(e).__name__)'" % port
        ).stdout.strip()
        assert direct == "dropped", direct
        new = _arrivals(peer)[before:]
        # Everything that arrived arrived at the allowed name's address, the TLS one
        # with its name; nothing reached the other address.
        assert new and all(line.split()[1] == a for line in new), new
        assert any(line.startswith("443 ") and "allowed.test" in line for line in new), new
        assert not any("other.test" in line or "sneaky" in line for line in new), new
    finally:
        s.kill()
    assert _chains(s.sandbox_id) == ""


def test_update_network_applies_to_a_running_sandbox(edaemon, peer):
    a, b = peer["a"], peer["b"]
    s = Sandbox.create(timeout=120)
    try:
        assert _probe(s, f"http,{b},x:8080")[f"http,{b},x:8080"] == "HTTP/1.0 200 OK"
        s.update_network({"deny_out": [b]})
        r = _probe(s, f"http,{a},x:8080", f"http,{b},x:8080")
        assert r == {f"http,{a},x:8080": "HTTP/1.0 200 OK", f"http,{b},x:8080": "ERR ConnectionRefusedError"}
        assert s.get_info().network["deny_out"] == [b]
        # What an update leaves out is cleared.
        s.update_network({})
        assert _probe(s, f"http,{b},x:8080")[f"http,{b},x:8080"] == "HTTP/1.0 200 OK"
        assert _chains(s.sandbox_id) == ""
        s.update_network({"allow_internet_access": False})
        assert _probe(s, f"http,{a},x:8080")[f"http,{a},x:8080"] == "ERR ConnectionRefusedError"
        assert s.get_info().allow_internet_access is False
    finally:
        s.kill()


def test_an_open_connection_is_judged_again(edaemon, peer):
    """A connection the old rules allowed and the new ones do not is cut."""
    s = Sandbox.create(timeout=120, network={"deny_out": [ALL_TRAFFIC], "allow_out": ["allowed.test"]})
    try:
        hold = (
            "import socket, time\n"
            f"s = socket.create_connection(('{peer['a']}', 80), timeout=5)\n"
            "s.sendall(b'GET /hold HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n')\n"
            "s.settimeout(50)\n"
            "print('first', s.recv(100).split(b'\\r\\n')[0].decode(), flush=True)\n"
            "t = time.time()\n"
            "print('then', repr(s.recv(100)), round(time.time() - t), flush=True)\n"
        )
        s.files.write("/tmp/hold.py", hold)
        # The sync SDK reads a background command's output only in wait(): the
        # progress goes through a file.
        h = s.commands.run("python3 /tmp/hold.py > /tmp/hold.out", background=True)
        deadline = time.time() + 20
        progress = ""
        while "first" not in progress and time.time() < deadline:
            time.sleep(0.1)
            progress = s.files.read("/tmp/hold.out")
        assert "first HTTP/1.0 200 OK" in progress, progress
        s.update_network({"deny_out": [ALL_TRAFFIC]})
        h.wait()
        out = s.files.read("/tmp/hold.out")
        line = [l for l in out.splitlines() if l.startswith("then")][0]
        # Closed by the proxy long before the server's 60 s.
        assert line.startswith("then b''"), line
        assert int(line.split()[-1]) < 20, line
    finally:
        s.kill()


def test_bad_rules_are_refused(edaemon, peer):
    from e2b.exceptions import SandboxException

    with pytest.raises(SandboxException) as e:
        Sandbox.create(timeout=60, network={"deny_out": ["example.com"]})
    assert "domain names can only be allowed" in str(e.value)
    with pytest.raises(SandboxException) as e:
        Sandbox.create(timeout=60, network={"allow_out": ["10.0.0.0/33"]})
    assert "10.0.0.0/33" in str(e.value)
    with pytest.raises(SandboxException) as e:
        Sandbox.create(timeout=60, network={"egress_proxy": {"address": "proxy.example.com:1080"}})
    assert "egressProxy" in str(e.value)
    # Loopback only has no network whose rules could change.
    off = Sandbox.create(timeout=60, allow_internet_access=False)
    try:
        with pytest.raises(SandboxException) as e:
            off.update_network({"allow_out": [peer["a"]]})
        assert "without internet access" in str(e.value)
    finally:
        off.kill()
    # Nothing was made by the refused creates.
    assert [x for x in Sandbox.list().next_items() if x.sandbox_id != off.sandbox_id] == []


def test_rules_async(edaemon, peer):
    a, b = peer["a"], peer["b"]

    async def main():
        s = await AsyncSandbox.create(
            timeout=120, allow_internet_access=False, network={"allow_out": [a]}
        )
        try:
            out = await s.commands.run(
                "python3 -c \"$P\" " + f"http,{a},x:8080 http,{b},x:8080", envs={"P": PROBE}
            )
            r = dict(line.split(" => ", 1) for line in out.stdout.splitlines())
            assert r == {f"http,{a},x:8080": "HTTP/1.0 200 OK", f"http,{b},x:8080": "ERR ConnectionRefusedError"}
            await s.update_network({"allow_out": [b], "deny_out": [ALL_TRAFFIC]})
            out = await s.commands.run(
                "python3 -c \"$P\" " + f"http,{a},x:8080 http,{b},x:8080", envs={"P": PROBE}
            )
            r = dict(line.split(" => ", 1) for line in out.stdout.splitlines())
            assert r == {f"http,{a},x:8080": "ERR ConnectionRefusedError", f"http,{b},x:8080": "HTTP/1.0 200 OK"}
        finally:
            await s.kill()

    asyncio.run(main())


def test_a_sandbox_cannot_hold_the_proxy(edaemon, peer):
    """Connections a domain rule sends to the proxy cost the daemon descriptors: a
    sandbox gets 256 at once, and the ones past that are closed at once, while the
    daemon goes on serving everyone."""
    s = Sandbox.create(timeout=120, network={"deny_out": [ALL_TRAFFIC], "allow_out": ["allowed.test"]})
    try:
        flood = (
            "import select, socket, time\n"
            f"held = [socket.create_connection(('{peer['a']}', 80), timeout=5) for _ in range(300)]\n"
            "time.sleep(1)\n"
            # Readable now: closed by the proxy (an end or a reset).
            "ready, _, _ = select.select(held, [], [], 1.5)\n"
            "print(sum(c in ready for c in held[:20]), sum(c in ready for c in held[-20:]))\n"
        )
        s.files.write("/tmp/flood.py", flood)
        out = s.commands.run("python3 /tmp/flood.py", timeout=120).stdout.split()
        # The first ones wait for their request; the last ones were turned away.
        assert out == ["0", "20"], out
        # The proxy still serves the sandbox once its connections are gone.
        assert _probe(s, f"http,{peer['b']},allowed.test")[f"http,{peer['b']},allowed.test"] == "HTTP/1.0 200 OK"
    finally:
        s.kill()
