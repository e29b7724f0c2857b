"""The sync E2B SDK against a live Warren, as an E2B application would use it."""

import json
import os
import time
import uuid

import pytest
from e2b import CommandExitException, PtySize, Sandbox, SandboxQuery
from e2b.exceptions import (
    FileNotFoundException,
    NotFoundException,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
)


@pytest.fixture
def sb(daemon):
    s = Sandbox.create(timeout=120)
    yield s
    s.kill()


def test_create_with_metadata_and_env(daemon):
    tag = uuid.uuid4().hex
    s = Sandbox.create(metadata={"suite": "sync", "tag": tag}, envs={"GREETING": "hello"}, timeout=60)
    try:
        r = s.commands.run("echo $GREETING; whoami; pwd")
        assert r.stdout == "hello\nuser\n/home/user\n"
        info = s.get_info()
        assert info.metadata == {"suite": "sync", "tag": tag}
        assert info.state.value == "running"
        assert s.is_running()
        found = Sandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()
        assert [i.sandbox_id for i in found] == [s.sandbox_id]
        none = Sandbox.list(query=SandboxQuery(metadata={"tag": "nope"})).next_items()
        assert none == []
    finally:
        s.kill()


def test_run_output_exit_env_cwd_callbacks(sb):
    r = sb.commands.run("echo out; echo err >&2; exit 0")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0)
    with pytest.raises(CommandExitException) as e:
        sb.commands.run("echo no >&2; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stderr == "no\n"
    r = sb.commands.run("echo $A-$B; pwd", envs={"A": "1", "B": "2"}, cwd="/tmp")
    assert r.stdout == "1-2\n/tmp\n"
    assert sb.commands.run("whoami", user="root").stdout == "root\n"
    out, err = [], []
    sb.commands.run(
        "for i in 1 2 3; do echo o$i; echo e$i >&2; sleep 0.05; done",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert "".join(out) == "o1\no2\no3\n"
    assert "".join(err) == "e1\ne2\ne3\n"


def test_background_connect_list_kill(sb):
    h = sb.commands.run("sleep 0.5; echo late", background=True)
    pid = h.pid
    h.disconnect()
    assert pid in [p.pid for p in sb.commands.list()]
    again = sb.commands.connect(pid)
    r = again.wait()
    assert r.stdout == "late\n"
    long = sb.commands.run("sleep 60", background=True)
    assert long.pid in [p.pid for p in sb.commands.list()]
    assert sb.commands.kill(long.pid)
    with pytest.raises(CommandExitException):
        long.wait()
    assert long.pid not in [p.pid for p in sb.commands.list()]
    assert sb.commands.kill(long.pid) is False
    with pytest.raises(NotFoundException):
        sb.commands.connect(999999)


def test_stdin(sb):
    h = sb.commands.run("cat", background=True, stdin=True)
    sb.commands.send_stdin(h.pid, "hello ")
    h.send_stdin(b"stdin\n")
    sb.commands.close_stdin(h.pid)
    assert h.wait().stdout == "hello stdin\n"


def test_pty(sb):
    h = sb.pty.create(PtySize(rows=24, cols=80))
    sb.pty.send_stdin(h.pid, b"stty size\n")
    time.sleep(0.5)
    sb.pty.resize(h.pid, PtySize(rows=40, cols=100))
    sb.pty.send_stdin(h.pid, b"stty size; exit\n")
    seen = bytearray()
    h.wait(on_pty=seen.extend)
    text = seen.decode(errors="replace")
    assert "24 80" in text and "40 100" in text


def test_files(sb):
    info = sb.files.write("/home/user/notes/a.txt", "hello")
    assert info.path == "/home/user/notes/a.txt"
    assert sb.files.read("notes/a.txt") == "hello"
    blob = os.urandom(10 << 20)
    sb.files.write("big.bin", blob)
    assert bytes(sb.files.read("big.bin", format="bytes")) == blob
    assert sb.files.get_info("big.bin").size == len(blob)
    # Files the API writes belong to the user, who can change them from commands.
    sb.commands.run("echo more >> /home/user/notes/a.txt")
    assert sb.files.read("/home/user/notes/a.txt") == "hellomore\n"
    # The template's own dotfiles (.bashrc, .profile) aside.
    names = sorted(e.name for e in sb.files.list("/home/user") if not e.name.startswith("."))
    assert names == ["big.bin", "notes"]
    assert sb.files.exists("notes/a.txt")
    assert not sb.files.exists("nope.txt")
    assert sb.files.make_dir("x/y") is True
    assert sb.files.make_dir("x/y") is False
    sb.commands.run("touch /home/user/x/y/z")
    entry = sb.files.rename("notes/a.txt", "notes/b.txt")
    assert entry.path == "/home/user/notes/b.txt"
    assert not sb.files.exists("notes/a.txt")
    sb.files.remove("x")
    assert not sb.files.exists("x")
    with pytest.raises(FileNotFoundException):
        sb.files.read("nope.txt")


def test_watch(sb):
    sb.files.make_dir("w")
    handle = sb.files.watch_dir("/home/user/w")
    sb.files.write("w/new.txt", "x")
    deadline = time.time() + 5
    events = []
    while time.time() < deadline:
        events += handle.get_new_events()
        if any(e.name == "new.txt" for e in events):
            break
        time.sleep(0.05)
    handle.stop()
    assert any(e.name == "new.txt" and e.type.value == "create" for e in events), events
    assert not any("warren-upload" in e.name for e in events), events


def test_timeout_pause_connect(daemon):
    s = Sandbox.create(timeout=60)
    try:
        s.files.write("state.txt", "kept")
        s.set_timeout(120)
        end = s.get_info().end_at.timestamp()
        assert end - time.time() > 100
        s.pause()
        assert Sandbox.get_info(s.sandbox_id).state.value == "paused"
        back = Sandbox.connect(s.sandbox_id)
        assert back.get_info().state.value == "running"
        assert back.files.read("state.txt") == "kept"
        assert back.commands.run("echo alive").stdout == "alive\n"
    finally:
        s.kill()


def test_kill_then_not_found(daemon):
    s = Sandbox.create(timeout=60)
    sid = s.sandbox_id
    s.kill()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sid)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sid)
    with pytest.raises(SandboxNotFoundException):
        s.set_timeout(30)
    assert Sandbox.kill(sid) is False
    assert not s.is_running()
    # envd calls are answered as E2B's proxy answers for a sandbox that is gone.
    with pytest.raises(SandboxNotRunningException):
        s.commands.run("true")
    with pytest.raises(SandboxNotRunningException):
        s.files.read("x")


def test_other_tenant_sees_nothing(daemon):
    s = Sandbox.create(timeout=60, metadata={"owner": "first"})
    other = {"api_key": daemon.other_key}
    try:
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(s.sandbox_id, **other)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.connect(s.sandbox_id, **other)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.set_timeout(s.sandbox_id, 30, **other)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.pause(s.sandbox_id, **other)
        assert Sandbox.kill(s.sandbox_id, **other) is False
        listed = Sandbox.list(query=SandboxQuery(metadata={"owner": "first"}), **other).next_items()
        assert listed == []
        assert s.commands.run("echo still").stdout == "still\n"
    finally:
        s.kill()


# A tiny server for the port tests: answers GET with what it was asked, and an
# `Upgrade: echo` request with 101, then echoes bytes (what a WebSocket splice needs).
PORT_SERVER = r'''
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
def serve(c):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            return
        data += chunk
    head = data.split(b"\r\n\r\n")[0].decode()
    lines = head.split("\r\n")
    headers = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
    if headers.get("upgrade") == "echo":
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            c.sendall(chunk)
        return
    body = ("%s token=%s host=%s" % (lines[0], headers.get("e2b-traffic-access-token"), headers.get("host"))).encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


def _start_port_server(s, port):
    s.files.write("/tmp/port_server.py", PORT_SERVER)
    s.commands.run(f"python3 /tmp/port_server.py {port}", background=True)
    s.commands.run(
        f"for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}))' "
        "2>/dev/null && exit 0; sleep 0.05; done; exit 1"
    )


def _get(daemon, host, path="/", headers=None):
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    c.request("GET", path, headers={"Host": host, **(headers or {})})
    r = c.getresponse()
    out = (r.status, r.read().decode(errors="replace"))
    c.close()
    return out


def test_traffic_to_a_port_by_host(daemon, sb):
    _start_port_server(sb, 8080)
    host = sb.get_host(8080)
    assert host.startswith(f"8080-{sb.sandbox_id}.")
    status, body = _get(daemon, host, "/some/path?q=1")
    assert status == 200, body
    assert body == f"GET /some/path?q=1 HTTP/1.1 token=None host={host}"
    # A port nothing listens on, and a sandbox that does not exist: one answer to a caller
    # who names only the id, so that a stranger cannot tell which ids exist.
    closed = _get(daemon, sb.get_host(8081))
    missing = _get(daemon, f"8081-{'0' * 16}.e2b.app")
    assert closed[0] == missing[0] == 502
    assert closed[1].replace(sb.sandbox_id, "ID") == missing[1].replace("0" * 16, "ID")
    # E2B's words for either are in it.
    message = json.loads(closed[1])["message"]
    assert "The sandbox was not found" in message and "port is not open" in message, message


def test_private_traffic_needs_the_token(daemon):
    s = Sandbox.create(timeout=120, network={"allow_public_traffic": False})
    try:
        token = s.traffic_access_token
        assert token
        _start_port_server(s, 8080)
        host = s.get_host(8080)
        # Without the token, or with a wrong one: as if there were no such sandbox, on an
        # open port and a closed one alike.
        missing = _get(daemon, f"8080-{'0' * 16}.e2b.app")
        unknown = missing[1].replace("0" * 16, "ID")
        for h in (host, s.get_host(8081)):
            for headers in ({}, {"e2b-traffic-access-token": "wrong"}):
                status, body = _get(daemon, h, headers=headers)
                port = h.split("-")[0]
                assert status == 502, body
                assert body.replace(s.sandbox_id, "ID") == unknown.replace("8080", port), body
        # With it, a closed port is E2B's answer, word for word.
        status, body = _get(daemon, s.get_host(8081), headers={"e2b-traffic-access-token": token})
        closed = json.loads(body)
        assert status == 502 and closed["message"] == "The sandbox is running but port is not open", body
        assert (closed["sandboxId"], closed["port"]) == (s.sandbox_id, 8081), body
        status, body = _get(daemon, host, headers={"e2b-traffic-access-token": token})
        assert status == 200, body
        # The token is the proxy's business; the service never sees it.
        assert "token=None" in body
        # The proxy headers E2B's SDKs use reach the same port.
        status, body = _get(
            daemon,
            "127.0.0.1",
            headers={"e2b-sandbox-id": s.sandbox_id, "e2b-sandbox-port": "8080", "e2b-traffic-access-token": token},
        )
        assert status == 200, body
        # An upgrade is spliced through both ways.
        import socket

        c = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
        c.sendall(
            f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n"
            f"e2b-traffic-access-token: {token}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        rest = head.split(b"\r\n\r\n", 1)[1]
        c.sendall(b"ping through the splice")
        while len(rest) < len(b"ping through the splice"):
            rest += c.recv(4096)
        assert rest == b"ping through the splice"
        c.close()
    finally:
        s.kill()


def test_snapshot_then_create_from_it(daemon):
    s = Sandbox.create(timeout=120)
    try:
        s.files.write("/home/user/state.txt", "kept")
        info = s.create_snapshot()
        assert info.snapshot_id and info.names == [info.snapshot_id]
        # The source keeps running.
        assert s.commands.run("cat /home/user/state.txt").stdout == "kept"
        mine = Sandbox.list_snapshots(sandbox_id=s.sandbox_id).next_items()
        assert [x.snapshot_id for x in mine] == [info.snapshot_id]
        t = Sandbox.create(info.snapshot_id, timeout=120)
        try:
            assert t.files.read("/home/user/state.txt") == "kept"
        finally:
            t.kill()
        # Another tenant neither sees nor uses it, nor removes it.
        theirs = Sandbox.list_snapshots(api_key=daemon.other_key).next_items()
        assert info.snapshot_id not in [x.snapshot_id for x in theirs]
        with pytest.raises(SandboxException, match="404: template .* not found"):
            Sandbox.create(info.snapshot_id, api_key=daemon.other_key)
        assert Sandbox.delete_snapshot(info.snapshot_id, api_key=daemon.other_key) is False
        assert Sandbox.delete_snapshot(info.snapshot_id) is True
        assert Sandbox.delete_snapshot(info.snapshot_id) is False
        with pytest.raises(SandboxException, match="404: template .* not found"):
            Sandbox.create(info.snapshot_id)
    finally:
        s.kill()
