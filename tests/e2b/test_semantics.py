"""E2B's own semantics where a program written for E2B's cloud depends on them: the
default lifetime, connect that only lengthens it, writes in place, removal of what is
not there, symlinks described by their target, the list's time filters, a command's
deadline, a pause that keeps only the files, a fork that copies the files, and gzip
uploads. Each case runs through the sync and the async SDK."""

import asyncio
import datetime
import gzip
import time
import urllib.parse
import uuid

import httpx
import pytest
from conftest import assert_write_events
from e2b import AsyncSandbox, Sandbox, SandboxQuery
from e2b.exceptions import SandboxException, TimeoutException
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType


def _lifetime(info) -> float:
    return info.end_at.timestamp() - time.time()


# 1. The default lifetime is E2B's 300 s, not the API's old 15 s.
def test_default_lifetime_sync(daemon):
    s = Sandbox.create()
    try:
        assert 280 < _lifetime(s.get_info()) <= 301
        assert s.commands.run("echo up").stdout == "up\n"
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_default_lifetime_async(daemon):
    s = await AsyncSandbox.create()
    try:
        assert 280 < _lifetime(await s.get_info()) <= 301
    finally:
        await s.kill()


# 2. connect(timeout=N) lengthens a running sandbox's life, never shortens it.
def test_connect_only_lengthens_sync(daemon):
    s = Sandbox.create(timeout=200)
    try:
        Sandbox.connect(s.sandbox_id, timeout=10)
        assert _lifetime(s.get_info()) > 150
        s.connect(timeout=400)
        assert _lifetime(s.get_info()) > 350
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_connect_only_lengthens_async(daemon):
    s = await AsyncSandbox.create(timeout=200)
    try:
        await AsyncSandbox.connect(s.sandbox_id, timeout=10)
        assert _lifetime(await s.get_info()) > 150
        await AsyncSandbox.connect(s.sandbox_id, timeout=400)
        assert _lifetime(await s.get_info()) > 350
    finally:
        await s.kill()


# 3. files.write writes the file itself: links see it, watchers see a write.
def test_write_in_place_sync(daemon):
    s = Sandbox.create(timeout=120)
    try:
        s.files.write("d/f.txt", "old")
        s.commands.run("ln /home/user/d/f.txt /home/user/hard")
        inode = s.commands.run("stat -c %i /home/user/d/f.txt").stdout
        handle = s.files.watch_dir("/home/user/d")
        s.files.write("d/f.txt", "new")
        events = []
        deadline = time.time() + 5
        while time.time() < deadline and not any(e.type == FilesystemEventType.WRITE for e in events):
            events += handle.get_new_events()
            time.sleep(0.05)
        handle.stop()
        assert any(e.type == FilesystemEventType.WRITE and e.name == "f.txt" for e in events), events
        assert s.commands.run("stat -c %i /home/user/d/f.txt").stdout == inode
        assert s.files.read("hard") == "new"
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_write_in_place_async(daemon):
    s = await AsyncSandbox.create(timeout=120)
    try:
        await s.files.write("d/f.txt", "old")
        wrote = asyncio.Event()

        def on_event(e):
            if e.type == FilesystemEventType.WRITE and e.name == "f.txt":
                wrote.set()

        handle = await s.files.watch_dir("/home/user/d", on_event=on_event)
        await s.files.write("d/f.txt", "new")
        await asyncio.wait_for(wrote.wait(), 5)
        await handle.stop()
        assert await s.files.read("d/f.txt") == "new"
    finally:
        await s.kill()


# 4. Removing what is not there is done, as E2B's os.RemoveAll.
def test_remove_missing_sync(daemon):
    s = Sandbox.create(timeout=60)
    try:
        s.files.remove("never/was")
        s.files.remove("work")
        assert s.files.make_dir("work") is True
        s.files.remove("work")
        assert not s.files.exists("work")
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_remove_missing_async(daemon):
    s = await AsyncSandbox.create(timeout=60)
    try:
        await s.files.remove("never/was")
        assert await s.files.make_dir("work") is True
    finally:
        await s.kill()


# 5. A symlink is described by where it leads: the target's type, its absolute path.
def _check_links(files_info):
    f, d, broken = files_info
    assert f.type.value == "file" and f.symlink_target == "/home/user/real/file.txt", f
    assert d.type.value == "dir" and d.symlink_target == "/home/user/real", d
    assert broken.type is None or broken.type.value not in ("file", "dir"), broken


LINKS = (
    "mkdir -p /home/user/real && echo hi > /home/user/real/file.txt && cd /home/user"
    " && ln -s real/file.txt flink && ln -s real dlink && ln -s nowhere broken"
)


def test_symlink_info_sync(daemon):
    s = Sandbox.create(timeout=60)
    try:
        s.commands.run(LINKS)
        _check_links([s.files.get_info(p) for p in ("flink", "dlink", "broken")])
        listed = {e.name: e for e in s.files.list("/home/user")}
        _check_links([listed["flink"], listed["dlink"], s.files.get_info("broken")])
        # As on E2B, the SDK leaves out of a listing what has no type it knows.
        assert "broken" not in listed
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_symlink_info_async(daemon):
    s = await AsyncSandbox.create(timeout=60)
    try:
        await s.commands.run(LINKS)
        _check_links([await s.files.get_info(p) for p in ("flink", "dlink", "broken")])
    finally:
        await s.kill()


# 6. Sandbox.list honours started_after.
def test_list_started_after_sync(daemon):
    tag = uuid.uuid4().hex
    first = Sandbox.create(timeout=60, metadata={"tag": tag})
    time.sleep(1.1)
    between = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(0.1)
    second = Sandbox.create(timeout=60, metadata={"tag": tag})
    try:
        q = SandboxQuery(metadata={"tag": tag}, started_after=between)
        assert [i.sandbox_id for i in Sandbox.list(query=q).next_items()] == [second.sandbox_id]
        everything = SandboxQuery(metadata={"tag": tag})
        assert len(Sandbox.list(query=everything).next_items()) == 2
        # A naive time is the SDK's local time; here that is UTC.
        naive = SandboxQuery(metadata={"tag": tag}, started_after=between.replace(tzinfo=None))
        assert [i.sandbox_id for i in Sandbox.list(query=naive).next_items()] == [second.sandbox_id]
    finally:
        first.kill()
        second.kill()


@pytest.mark.asyncio
async def test_list_started_after_async(daemon):
    tag = uuid.uuid4().hex
    first = await AsyncSandbox.create(timeout=60, metadata={"tag": tag})
    await asyncio.sleep(1.1)
    between = datetime.datetime.now(datetime.timezone.utc)
    await asyncio.sleep(0.1)
    second = await AsyncSandbox.create(timeout=60, metadata={"tag": tag})
    try:
        q = SandboxQuery(metadata={"tag": tag}, started_after=between)
        page = await AsyncSandbox.list(query=q).next_items()
        assert [i.sandbox_id for i in page] == [second.sandbox_id]
    finally:
        await first.kill()
        await second.kill()


# 7. A command past its timeout raises the SDK's TimeoutException, and is killed.
def test_command_deadline_sync(daemon):
    s = Sandbox.create(timeout=60)
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutException):
            s.commands.run("sleep 30; echo late", timeout=1)
        assert time.monotonic() - start < 15
        assert "sleep 30" not in s.commands.run("ps -eo args").stdout
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_command_deadline_async(daemon):
    s = await AsyncSandbox.create(timeout=60)
    try:
        with pytest.raises(TimeoutException):
            await s.commands.run("sleep 30", timeout=1)
    finally:
        await s.kill()


# 8. pause(keep_memory=False) keeps the files and ends the processes; resume starts it.
def test_pause_without_memory_sync(daemon):
    s = Sandbox.create(timeout=120)
    try:
        s.files.write("kept.txt", "files stay")
        s.commands.run("sleep 600", background=True)
        assert s.pause(keep_memory=False) is True
        assert Sandbox.get_info(s.sandbox_id).state.value == "paused"
        back = Sandbox.connect(s.sandbox_id)
        assert back.files.read("kept.txt") == "files stay"
        assert "sleep 600" not in back.commands.run("ps -eo args").stdout
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_pause_without_memory_async(daemon):
    s = await AsyncSandbox.create(timeout=120)
    try:
        await s.files.write("kept.txt", "files stay")
        await s.commands.run("sleep 600", background=True)
        assert await s.pause(mode="filesystem") is True
        back = await AsyncSandbox.connect(s.sandbox_id)
        assert await back.files.read("kept.txt") == "files stay"
        assert "sleep 600" not in (await back.commands.run("ps -eo args")).stdout
    finally:
        await s.kill()


# A fork of a namespace sandbox (no memory snapshots) copies its files at that moment;
# each copy has its own files from then on, and the template's processes, not the
# source's. (On gVisor the copies have the processes too: test_gvisor.py.)
def test_fork_copies_the_files_sync(daemon):
    s = Sandbox.create(timeout=120)
    copies = []
    try:
        s.files.write("state.txt", "before the fork")
        s.commands.run("sleep 600", background=True)
        copies = s.fork(count=2, timeout=60)
        assert len({c.sandbox_id for c in copies} | {s.sandbox_id}) == 3
        s.files.write("state.txt", "the source went on")
        for i, c in enumerate(copies):
            assert c.files.read("state.txt") == "before the fork"
            c.files.write("mine.txt", f"copy {i}")
            assert "sleep 600" not in c.commands.run("ps -eo args").stdout
            assert c.get_info().end_at.timestamp() - time.time() <= 61
        assert [c.files.read("mine.txt") for c in copies] == ["copy 0", "copy 1"]
        assert not s.files.exists("mine.txt")
        # The files the copies started from are no template anyone is shown.
        listed = [t.snapshot_id for t in Sandbox.list_snapshots().next_items()]
        assert not any(s.sandbox_id in x for x in listed), listed
    finally:
        for c in copies:
            c.kill()
        s.kill()


@pytest.mark.asyncio
async def test_fork_copies_the_files_async(daemon):
    s = await AsyncSandbox.create(timeout=120)
    try:
        await s.files.write("state.txt", "before the fork")
        copies = await s.fork(timeout=60)
        assert len(copies) == 1 and copies[0].sandbox_id != s.sandbox_id
        try:
            assert await copies[0].files.read("state.txt") == "before the fork"
            assert (await copies[0].commands.run("echo alive")).stdout == "alive\n"
        finally:
            await copies[0].kill()
    finally:
        await s.kill()


# A paused sandbox with its memory resumes with its processes; `on_resume="reboot"`
# starts it from its files instead.
def test_connect_reboot_sync(daemon):
    s = Sandbox.create(timeout=120)
    try:
        s.commands.run("sleep 600", background=True)
        s.pause()
        back = Sandbox.connect(s.sandbox_id, on_resume="reboot")
        assert "sleep 600" not in back.commands.run("ps -eo args").stdout
    finally:
        s.kill()


# 9 (part). A gzip upload is taken, decompressed, and bounded as a plain one.
def test_gzip_upload_sync(daemon):
    s = Sandbox.create(timeout=60)
    try:
        blob = b"compressible " * 100_000
        s.files.write("z.bin", blob, gzip=True)
        assert bytes(s.files.read("z.bin", format="bytes")) == blob
        # Not gzip at all: a clear refusal, nothing half-written.
        r = httpx.post(
            f"{daemon.url}/files",
            params={"path": "bad.bin"},
            content=b"not gzip",
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Encoding": "gzip",
                "E2b-Sandbox-Id": s.sandbox_id,
                "E2b-Sandbox-Port": "49983",
                "X-Access-Token": s._envd_access_token or "",
            },
        )
        assert r.status_code >= 400, (r.status_code, r.text)
        assert not s.files.exists("bad.bin")
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_gzip_upload_async(daemon):
    s = await AsyncSandbox.create(timeout=60)
    try:
        blob = gzip.decompress(gzip.compress(b"x" * 1000))
        await s.files.write("z.txt", blob, gzip=True)
        assert await s.files.read("z.txt", format="bytes") == blob
    finally:
        await s.kill()


# Per-sandbox metrics: the daemon's readings every 5 s, as E2B's SandboxMetric.
def test_metrics_sync(daemon):
    s = Sandbox.create(timeout=60)
    try:
        s.commands.run("timeout 7 sh -c 'while :; do :; done'", background=True)
        deadline = time.time() + 30
        metrics = []
        while time.time() < deadline:
            metrics = s.get_metrics()
            if len(metrics) >= 2 and any(m.cpu_used_pct > 20 for m in metrics):
                break
            time.sleep(1)
        assert len(metrics) >= 2, metrics
        busy = max(m.cpu_used_pct for m in metrics)
        assert busy > 20, metrics
        m = metrics[-1]
        assert m.cpu_count >= 1 and 0 < m.mem_used < m.mem_total and m.disk_total > 0
        stamps = [x.timestamp for x in metrics]
        assert stamps == sorted(stamps)
        # A window after the last reading holds nothing.
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
        assert s.get_metrics(start=later) == []
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_metrics_async(daemon):
    s = await AsyncSandbox.create(timeout=60)
    try:
        metrics = []
        for _ in range(30):
            metrics = await s.get_metrics()
            if metrics:
                break
            await asyncio.sleep(0.5)
        assert metrics and metrics[0].mem_used > 0
    finally:
        await s.kill()


# lifecycle: pause at the timeout, and resume by itself on use (a call, port traffic).
def test_auto_resume_sync(daemon):
    from test_sync import _get, _start_port_server

    s = Sandbox.create(timeout=4, lifecycle={"on_timeout": "pause", "auto_resume": True})
    plain = Sandbox.create(timeout=60)
    try:
        assert Sandbox.get_info(s.sandbox_id).lifecycle["auto_resume"] is True
        _start_port_server(s, 8080)
        s.commands.run("echo 1 > /tmp/kept")
        deadline = time.time() + 20
        while Sandbox.get_info(s.sandbox_id).state.value != "paused" and time.time() < deadline:
            time.sleep(0.2)
        assert Sandbox.get_info(s.sandbox_id).state.value == "paused"
        # An envd call waits for the resume instead of failing.
        assert s.commands.run("cat /tmp/kept").stdout == "1\n"
        assert Sandbox.get_info(s.sandbox_id).state.value == "running"
        # Its lifetime had ended: it gets E2B's default one from the resume, rather than
        # being paused again at once.
        time.sleep(2)
        assert Sandbox.get_info(s.sandbox_id).state.value == "running"
        assert 250 < _lifetime(s.get_info()) <= 301
        # Traffic to a port of a paused sandbox: the first request waits for it.
        s.pause()
        status, body = _get(daemon, s.get_host(8080), "/after-pause")
        assert status == 200, body
        assert Sandbox.get_info(s.sandbox_id).state.value == "running"
        # Without auto-resume, a paused sandbox stays paused and says so.
        plain.pause()
        with pytest.raises(Exception):
            plain.commands.run("true")
        assert Sandbox.get_info(plain.sandbox_id).state.value == "paused"
        # Auto-resume needs a pause that keeps memory; the API refuses it otherwise,
        # and makes nothing.
        before = len(Sandbox.list().next_items())
        for body in (
            {"templateID": "base", "autoResume": {"enabled": True}},
            {"templateID": "base", "autoPause": True, "autoPauseMemory": False, "autoResume": {"enabled": True}},
        ):
            r = httpx.post(f"{daemon.url}/v2/sandboxes", json=body, headers={"X-API-Key": daemon.key})
            assert r.status_code == 400 and "autoResume" in r.text, r.text
        assert len(Sandbox.list().next_items()) == before
    finally:
        s.kill()
        plain.kill()


@pytest.mark.asyncio
async def test_auto_resume_async(daemon):
    s = await AsyncSandbox.create(timeout=60, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        await s.pause()
        assert (await s.files.read("/etc/hostname")) != ""
        assert (await AsyncSandbox.get_info(s.sandbox_id)).state.value == "running"
    finally:
        await s.kill()


# 9. envd 0.6.x: file metadata as user.e2b.* extended attributes, entries in watch events.
def test_file_metadata_sync(daemon):
    s = Sandbox.create(timeout=60)
    try:
        info = s.files.write("tagged.txt", "x", metadata={"Owner": "alice", "run": "7"})
        assert info.metadata == {"owner": "alice", "run": "7"}
        assert s.files.get_info("tagged.txt").metadata == {"owner": "alice", "run": "7"}
        listed = {e.name: e for e in s.files.list("/home/user")}
        assert listed["tagged.txt"].metadata == {"owner": "alice", "run": "7"}
        # Kept as extended attributes the sandbox's own tools see, and set from inside too.
        out = s.commands.run("getfattr -n user.e2b.owner --only-values tagged.txt 2>/dev/null || python3 -c \"import os; print(os.getxattr('tagged.txt', 'user.e2b.owner').decode())\"")
        assert out.stdout.strip() == "alice"
        s.commands.run("python3 -c \"import os; os.setxattr('tagged.txt', 'user.e2b.stage', b'done')\"")
        assert s.files.get_info("tagged.txt").metadata["stage"] == "done"
        assert s.files.get_info("/etc/hostname").metadata is None
        # An overwrite's metadata is the file's whole metadata, as envd's: none clears it
        # (a truncation keeps extended attributes), other keys replace it.
        assert s.files.write("tagged.txt", "y").metadata is None
        assert s.files.get_info("tagged.txt").metadata is None
        s.files.write("tagged.txt", "z", metadata={"other": "x"})
        assert s.files.get_info("tagged.txt").metadata == {"other": "x"}
    finally:
        s.kill()


# 10. files.write's events are envd's (E2B's own tests count them): a new file CREATE,
# CHMOD (envd gives the file to its user), WRITE; an overwrite starts with a WRITE.
def test_write_events_sync(daemon):
    s = Sandbox.create(timeout=60)
    try:
        assert_write_events(s, "/home/user/ev")
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_watch_entries_async(daemon):
    s = await AsyncSandbox.create(timeout=60)
    try:
        await s.files.make_dir("w")
        got = asyncio.Queue()
        handle = await s.files.watch_dir("/home/user/w", on_event=got.put_nowait, include_entry=True)
        await s.files.write("w/new.txt", "hello", metadata={"k": "v"})
        deadline = asyncio.get_running_loop().time() + 5
        entry = None
        while entry is None:
            e = await asyncio.wait_for(got.get(), max(0.1, deadline - asyncio.get_running_loop().time()))
            if e.name == "new.txt" and e.entry is not None and e.entry.size == 5:
                entry = e.entry
        await handle.stop()
        assert entry.path == "/home/user/w/new.txt" and entry.type.value == "file"
        assert entry.metadata == {"k": "v"}
    finally:
        await s.kill()


# Signed file URLs: usable without the access token, only as signed, until they expire.
# With E2B_SANDBOX_URL the SDK's URL names Warren, not the sandbox; as under a wildcard DNS
# name (docs/e2b.md), the sandbox is named by the host the request is sent to.
def _via_host(daemon, sandbox, url, method="GET", **kw):
    u = urllib.parse.urlsplit(url)
    host = f"49983-{sandbox.sandbox_id}.e2b.app"
    return httpx.request(method, f"{daemon.url}{u.path}?{u.query}", headers={"Host": host}, **kw)


def test_signed_file_urls_sync(daemon):
    s = Sandbox.create(timeout=60)
    try:
        s.files.write("shared.txt", "via a link")
        url = s.download_url("shared.txt")
        assert "signature=v1_" in url
        r = _via_host(daemon, s, url)
        assert r.status_code == 200 and r.text == "via a link", r.text
        # Another path, or a changed signature: refused, in envd's words.
        r = _via_host(daemon, s, url.replace("shared.txt", "other.txt"))
        assert (r.status_code, r.json()) == (401, {"code": 401, "message": "invalid signature"})
        assert _via_host(daemon, s, url.replace("signature=v1_", "signature=v1_A")).status_code == 401
        # Expired: envd's answer, word for word (E2B's own tests compare the whole body);
        # a wrong signature with a past expiration is still a wrong signature.
        r = _via_host(daemon, s, s.download_url("shared.txt", use_signature_expiration=-120))
        assert (r.status_code, r.json()) == (401, {"code": 401, "message": "signature is already expired"})
        old = s.download_url("shared.txt", use_signature_expiration=-120)
        r = _via_host(daemon, s, old.replace("signature=v1_", "signature=v1_A"))
        assert r.json()["message"] == "invalid signature", r.text
        # A read signature does not write.
        assert _via_host(daemon, s, url, "POST", files={"file": ("x", b"no")}).status_code == 401
        up = s.upload_url("uploaded.txt")
        r = _via_host(daemon, s, up, "POST", files={"file": ("uploaded.txt", b"sent by link")})
        assert r.status_code == 200, r.text
        assert s.files.read("uploaded.txt") == "sent by link"
        short = s.download_url("shared.txt", use_signature_expiration=1)
        time.sleep(2.1)
        assert _via_host(daemon, s, short).status_code == 401
        # As the SDK builds them on E2B_SANDBOX_URL, naming no sandbox: the sandbox whose
        # token signed the URL serves it, and none other.
        r = httpx.get(s.download_url("shared.txt"))
        assert r.status_code == 200 and r.text == "via a link", r.text
        r = httpx.post(s.upload_url("direct.txt"), files={"file": ("direct.txt", b"no header")})
        assert r.status_code == 200, r.text
        assert s.files.read("direct.txt") == "no header"
        r = httpx.get(s.download_url("shared.txt", use_signature_expiration=-120))
        assert (r.status_code, r.json()) == (401, {"code": 401, "message": "signature is already expired"})
        other = Sandbox.create(timeout=60)
        try:
            other.files.write("shared.txt", "the other one")
            assert httpx.get(other.download_url("shared.txt")).text == "the other one"
            assert httpx.get(s.download_url("shared.txt")).text == "via a link"
        finally:
            other.kill()
    finally:
        s.kill()


@pytest.mark.asyncio
async def test_signed_file_urls_async(daemon):
    s = await AsyncSandbox.create(timeout=60)
    try:
        await s.files.write("a.txt", "async link")
        r = _via_host(daemon, s, s.download_url("a.txt", use_signature_expiration=60))
        assert r.status_code == 200 and r.text == "async link"
    finally:
        await s.kill()


# Internet access is on unless asked off, as on E2B (checked by the route out, no traffic
# leaves the host).
def test_internet_access_by_default(daemon):
    on = Sandbox.create(timeout=60)
    off = Sandbox.create(timeout=60, allow_internet_access=False)
    try:
        assert on.get_info().allow_internet_access is True
        assert off.get_info().allow_internet_access is False
        route = "cat /proc/net/route | awk 'NR > 1 && $2 == \"00000000\" {print \"default\"}'"
        assert on.commands.run(route).stdout == "default\n"
        assert off.commands.run(route).stdout == ""
    finally:
        on.kill()
        off.kill()


# mask_request_host: the sandbox's services see the host it asked for.
def test_mask_request_host_sync(daemon):
    from test_sync import _get, _start_port_server

    s = Sandbox.create(timeout=60, network={"mask_request_host": "localhost:${PORT}"})
    try:
        _start_port_server(s, 8080)
        status, body = _get(daemon, s.get_host(8080), "/masked")
        assert status == 200, body
        assert body.endswith("host=localhost:8080"), body
    finally:
        s.kill()


def test_file_metadata_is_bounded(daemon):
    s = Sandbox.create(timeout=60)
    try:
        from e2b.exceptions import SandboxException

        with pytest.raises(SandboxException):
            s.files.write("big.txt", "x", metadata={"k": "v" * 2000})
        with pytest.raises(SandboxException):
            s.files.write("many.txt", "x", metadata={f"k{i}": "v" for i in range(40)})
        # Nothing half-done: refused before the file was written.
        assert not s.files.exists("big.txt") and not s.files.exists("many.txt")
    finally:
        s.kill()


# 11. A write makes the directories missing above the file as envd does: the user's, also
# where the user could not make them (a new top-level directory); never inside a directory
# the user may not enter, nor through a link.
def test_write_makes_parents_as_envd_sync(daemon):
    s = Sandbox.create(timeout=60)
    try:
        s.files.write("/0/deep/multi.txt", "x")
        assert s.files.read("/0/deep/multi.txt") == "x"
        out = s.commands.run("stat -c '%U %a' /0 /0/deep /0/deep/multi.txt").stdout.splitlines()
        assert out == ["user 755", "user 755", "user 644"], out
        with pytest.raises(Exception):
            s.files.write("/root/made/x.txt", "x")
        absent = "test -e /root/made || echo absent"
        assert s.commands.run(absent, user="root").stdout == "absent\n"
        # What was there before is never given away, only what was made.
        s.files.write("/usr/local/made/x.txt", "x")
        owners = s.commands.run("stat -c %U /usr/local /usr/local/made").stdout
        assert owners == "root\nuser\n", owners
        s.commands.run("ln -s /etc /home/user/etc-link")
        with pytest.raises(Exception):
            s.files.write("/home/user/etc-link/made/x.txt", "x")
        assert s.commands.run("test -e /etc/made || echo absent").stdout == "absent\n"
        # Where the user may make them, the user does (as before).
        s.files.write("/tmp/a/b/c.txt", "y")
        assert s.commands.run("stat -c %U /tmp/a/b").stdout == "user\n"
        # make_dir as envd's MakeDir: the directory and those above it the user's.
        assert s.files.make_dir("/newtop/sub") is True
        assert s.commands.run("stat -c %U /newtop /newtop/sub").stdout == "user\nuser\n"
        assert s.files.make_dir("/newtop/sub") is False
        with pytest.raises(Exception):
            s.files.make_dir("/root/made")
        assert s.commands.run(absent, user="root").stdout == "absent\n"
    finally:
        s.kill()


# 12. A command whose sandbox is killed under it: the stream ends as a microVM's death ends
# it (the connection drops), and the SDK, asking the sandbox's health, says it was killed.
def test_command_of_a_killed_sandbox_sync(daemon):
    s = Sandbox.create(timeout=60)
    cmd = s.commands.run("sleep 60", background=True)
    s.kill()
    with pytest.raises(SandboxException) as e:
        cmd.wait()
    assert "sandbox was killed or reached its end of life" in str(e.value), e.value


@pytest.mark.asyncio
async def test_command_of_a_killed_sandbox_async(daemon):
    s = await AsyncSandbox.create(timeout=60)
    cmd = await s.commands.run("sleep 60", background=True)
    await s.kill()
    with pytest.raises(SandboxException) as e:
        await cmd.wait()
    assert "sandbox was killed or reached its end of life" in str(e.value), e.value
