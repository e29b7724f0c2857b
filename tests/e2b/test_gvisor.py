"""E2B programs on a gVisor template: pause keeps the processes and their memory, and
`fork` copies a running sandbox, processes included. A host without gVisor skips these
visibly, with the reason `warren backends` gives."""

import json
import os
import time
import uuid

import pytest
from e2b import AsyncSandbox, Sandbox

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


def test_fork_of_a_namespace_sandbox_is_refused_clearly(daemon):
    s = Sandbox.create(timeout=60)
    try:
        with pytest.raises(Exception, match="gvisor"):
            s.fork()
    finally:
        s.kill()
