"""The async E2B SDK against a live Warren: the same calls, through AsyncSandbox."""

import asyncio
import os
import uuid

import pytest
import pytest_asyncio
from e2b import AsyncSandbox, CommandExitException, PtySize, SandboxQuery
from e2b.exceptions import (
    FileNotFoundException,
    NotFoundException,
    SandboxNotFoundException,
    SandboxNotRunningException,
)


@pytest_asyncio.fixture
async def sb(daemon):
    s = await AsyncSandbox.create(timeout=120)
    yield s
    await s.kill()


@pytest.mark.asyncio
async def test_create_run_and_callbacks(daemon):
    tag = uuid.uuid4().hex
    s = await AsyncSandbox.create(metadata={"tag": tag}, envs={"GREETING": "hi"}, timeout=60)
    try:
        r = await s.commands.run("echo $GREETING; whoami")
        assert r.stdout == "hi\nuser\n"
        with pytest.raises(CommandExitException) as e:
            await s.commands.run("exit 7")
        assert e.value.exit_code == 7
        out, err = [], []
        await s.commands.run(
            "echo a; echo b >&2", on_stdout=out.append, on_stderr=err.append, cwd="/tmp"
        )
        assert ("".join(out), "".join(err)) == ("a\n", "b\n")
        assert (await s.commands.run("pwd", cwd="/tmp", envs={"X": "1"})).stdout == "/tmp\n"
        page = await AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()
        assert [i.sandbox_id for i in page] == [s.sandbox_id]
    finally:
        await s.kill()


@pytest.mark.asyncio
async def test_background_stdin_kill(sb):
    h = await sb.commands.run("sleep 0.3; echo done", background=True)
    await h.disconnect()
    again = await sb.commands.connect(h.pid)
    assert (await again.wait()).stdout == "done\n"
    cat = await sb.commands.run("cat", background=True, stdin=True)
    await sb.commands.send_stdin(cat.pid, "abc\n")
    await sb.commands.close_stdin(cat.pid)
    assert (await cat.wait()).stdout == "abc\n"
    long = await sb.commands.run("sleep 60", background=True)
    assert long.pid in [p.pid for p in await sb.commands.list()]
    assert await sb.commands.kill(long.pid)
    assert await sb.commands.kill(long.pid) is False
    with pytest.raises(NotFoundException):
        await sb.commands.connect(999999)


@pytest.mark.asyncio
async def test_pty(sb):
    seen = bytearray()
    h = await sb.pty.create(PtySize(rows=24, cols=80), on_data=seen.extend)
    await sb.pty.send_stdin(h.pid, b"stty size\n")
    await asyncio.sleep(0.5)
    await sb.pty.resize(h.pid, PtySize(rows=30, cols=90))
    await sb.pty.send_stdin(h.pid, b"stty size; exit\n")
    await h.wait()
    text = seen.decode(errors="replace")
    assert "24 80" in text and "30 90" in text


@pytest.mark.asyncio
async def test_files_and_watch(sb):
    events = []
    await sb.files.make_dir("w")
    handle = await sb.files.watch_dir("/home/user/w", on_event=events.append)
    await sb.files.write("w/a.txt", "one")
    blob = os.urandom(10 << 20)
    await sb.files.write("big.bin", blob)
    assert bytes(await sb.files.read("big.bin", format="bytes")) == blob
    assert await sb.files.read("w/a.txt") == "one"
    assert await sb.files.exists("w/a.txt")
    assert not await sb.files.exists("w/zzz")
    assert await sb.files.make_dir("d/e") is True
    assert await sb.files.make_dir("d/e") is False
    await sb.files.rename("w/a.txt", "w/b.txt")
    assert sorted(e.name for e in await sb.files.list("w")) == ["b.txt"]
    await sb.files.remove("d")
    assert not await sb.files.exists("d")
    with pytest.raises(FileNotFoundException):
        await sb.files.read("nope")
    for _ in range(100):
        if any(e.name == "b.txt" for e in events):
            break
        await asyncio.sleep(0.05)
    await handle.stop()
    names = [(e.name, e.type.value) for e in events]
    assert ("a.txt", "create") in names and ("a.txt", "rename") in names, names


@pytest.mark.asyncio
async def test_timeout_pause_connect_kill(daemon):
    s = await AsyncSandbox.create(timeout=60)
    sid = s.sandbox_id
    try:
        await s.files.write("keep.txt", "kept")
        await s.set_timeout(90)
        await s.pause()
        assert (await AsyncSandbox.get_info(sid)).state.value == "paused"
        back = await AsyncSandbox.connect(sid)
        assert await back.files.read("keep.txt") == "kept"
    finally:
        await s.kill()
    with pytest.raises(SandboxNotFoundException):
        await AsyncSandbox.get_info(sid)
    with pytest.raises(SandboxNotRunningException):
        await s.commands.run("true")


@pytest.mark.asyncio
async def test_other_tenant_sees_nothing(daemon):
    s = await AsyncSandbox.create(timeout=60)
    try:
        with pytest.raises(SandboxNotFoundException):
            await AsyncSandbox.get_info(s.sandbox_id, api_key=daemon.other_key)
        with pytest.raises(SandboxNotFoundException):
            await AsyncSandbox.connect(s.sandbox_id, api_key=daemon.other_key)
        assert await AsyncSandbox.kill(s.sandbox_id, api_key=daemon.other_key) is False
        assert (await s.commands.run("echo ok")).stdout == "ok\n"
    finally:
        await s.kill()
