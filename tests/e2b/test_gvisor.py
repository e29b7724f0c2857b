"""E2B programs on a gVisor template: pause keeps the processes and their memory,
`fork` copies a running sandbox, processes included, and so do its snapshots. A host without gVisor skips these
visibly, with the reason `warren backends` gives."""

import json
import os
import time
import uuid

import pytest
from conftest import assert_write_events
from e2b import AsyncSandbox, InvalidArgumentException, Sandbox

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"


@pytest.fixture(scope="module")
def gvisor_template(daemon):
    listed = json.loads(daemon.run("backends", "--json", "--socket", daemon.socket))
    gvisor = next(b for b in listed if b["name"] == "gvisor")
    if not gvisor["available"]:
        pytest.skip(f"SKIPPED: gvisor is not available here: {gvisor.get('reason')}")
    name = f"gv-{uuid.uuid4().hex[:8]}"
    daemon.run(
        "template", "build", "--name", name, "--from", "host", "--run", "true",
        "--isolation", "gvisor", "--socket", daemon.socket,
    )
    yield name
    daemon.run("template", "rm", name, "--socket", daemon.socket, check=False)


def _count(s) -> int:
    # The loop rewrites the file: a read can land between its truncation and write.
    for _ in range(50):
        out = s.commands.run("cat /tmp/count").stdout.strip()
        if out:
            return int(out)
        time.sleep(0.05)
    raise AssertionError("the counter file stayed empty")


def _grows(s, than: int) -> bool:
    deadline = time.time() + 10
    while time.time() < deadline:
        if _count(s) > than:
            return True
        time.sleep(0.2)
    return False


def test_pause_keeps_memory_and_fork_copies_processes(daemon, gvisor_template):
    s = Sandbox.create(gvisor_template, timeout=120)
    forks = []
    try:
        # Its kernel is gVisor's, not the host's.
        assert s.commands.run("uname -r").stdout.strip() != os.uname().release
        s.commands.run(COUNTER, background=True)
        time.sleep(0.5)
        before = _count(s)
        assert s.pause() is True
        assert Sandbox.get_info(s.sandbox_id).state.value == "paused"
        back = Sandbox.connect(s.sandbox_id)
        after = _count(back)
        # The same loop carried on from where it stopped, not a fresh one from 1.
        assert after >= before, (before, after)
        forks = back.fork(count=2, timeout=60)
        assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks), forks
        ids = {f.sandbox_id for f in forks}
        assert s.sandbox_id not in ids and len(ids) == 2
        for f in forks:
            n = _count(f)
            assert n >= after
            assert _grows(f, n), "the counter runs on in the copy"
    finally:
        for f in forks:
            f.kill()
        s.kill()


# gVisor's files hold no extended attributes: a write with metadata is refused whole and
# says why, nothing written, an existing file untouched; and a watcher sees envd's events
# (a new file CREATE, CHMOD, WRITE; an overwrite starting with a WRITE, which gVisor's
# truncation at open does not make).
def test_files_on_gvisor(daemon, gvisor_template):
    s = Sandbox.create(gvisor_template, timeout=60)
    try:
        with pytest.raises(InvalidArgumentException, match="metadata"):
            s.files.write("/tmp/m.txt", "x", metadata={"k": "v"})
        assert not s.files.exists("/tmp/m.txt")
        s.files.write("/tmp/m.txt", "old")
        with pytest.raises(InvalidArgumentException, match="metadata"):
            s.files.write("/tmp/m.txt", "new", metadata={"k": "v"})
        assert s.files.read("/tmp/m.txt") == "old"

        assert_write_events(s, "/tmp/ev")
    finally:
        s.kill()


def test_snapshot_keeps_memory_on_gvisor(daemon, gvisor_template):
    s = Sandbox.create(gvisor_template, timeout=120)
    made = []
    try:
        s.commands.run(COUNTER, background=True)
        s.files.write("/tmp/mark", "from the source")
        time.sleep(0.5)
        info = s.create_snapshot()
        at = _count(s)
        # The source runs on.
        assert _grows(s, at)
        for _ in range(2):
            made.append(Sandbox.create(info.snapshot_id, timeout=120))
        for t in made:
            # The loop of the source, carried on: not a fresh one from 1.
            n = _count(t)
            assert n >= at - 5 and n > 1, (at, n)
            assert _grows(t, n), "the counter runs on in the sandbox made from it"
            assert t.files.read("/tmp/mark") == "from the source"
        made[0].files.write("/tmp/mark", "changed")
        assert made[1].files.read("/tmp/mark") == "from the source"
    finally:
        for t in made:
            t.kill()
        s.kill()
    assert Sandbox.delete_snapshot(info.snapshot_id) is True


@pytest.mark.asyncio
async def test_fork_async(daemon, gvisor_template):
    s = await AsyncSandbox.create(gvisor_template, timeout=120)
    try:
        await s.files.write("/tmp/mark", "from the source")
        copies = await s.fork(timeout=60)
        try:
            assert len(copies) == 1 and isinstance(copies[0], AsyncSandbox), copies
            assert await copies[0].files.read("/tmp/mark") == "from the source"
        finally:
            for c in copies:
                await c.kill()
    finally:
        await s.kill()




def test_internet_on_gvisor_when_asked(daemon, gvisor_template):
    """A gVisor template's sandbox is offline unless the create asks (so that pause to
    disk and fork work); asked, it is on `nat`: it has a way out, reaches nothing of the
    host, serves its ports through the daemon, pauses in place with its memory, and is
    not forked (its sockets are the host kernel's)."""
    from test_sync import _get, _start_port_server

    offline = Sandbox.create(gvisor_template, timeout=60)
    s = Sandbox.create(gvisor_template, timeout=120, allow_internet_access=True)
    try:
        assert offline.get_info().allow_internet_access is False
        assert s.get_info().allow_internet_access is True
        route = "awk 'NR > 1 && $2 == \"00000000\" {print \"default\"}' /proc/net/route"
        assert s.commands.run(route).stdout == "default\n"
        assert offline.commands.run(route).stdout == ""
        # The daemon's own E2B port on the host's loopback is not the sandbox's loopback.
        probe = (
            "python3 -c 'import socket,sys\n"
            "try:\n socket.create_connection((\"127.0.0.1\", %d), timeout=2); print(\"open\")\n"
            "except OSError as e: print(type(e).__name__)'" % int(daemon.url.rsplit(":", 1)[1])
        )
        assert s.commands.run(probe).stdout.strip() == "ConnectionRefusedError"
        _start_port_server(s, 8080)
        status, body = _get(daemon, s.get_host(8080), "/through-the-daemon")
        assert status == 200, body
        s.commands.run(COUNTER, background=True)
        time.sleep(0.5)
        before = _count(s)
        assert s.pause() is True
        back = Sandbox.connect(s.sandbox_id)
        assert _count(back) >= before
        assert _grows(back, _count(back))
        with pytest.raises(Exception, match="`none`"):
            back.fork()
    finally:
        s.kill()
        offline.kill()
