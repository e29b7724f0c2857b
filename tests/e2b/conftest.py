"""A live `warren serve` for the E2B SDK to drive.

The daemon gets its own run and data directories (short, under /tmp, so the unix
socket path fits), an E2B listener on a free loopback port, and two tenants: the
default one, whose key the SDK uses through E2B_API_KEY, and `other`, whose key the
isolation tests pass explicitly. At the end every sandbox left is killed, the daemon
stopped, and `warren doctor` must find nothing left behind.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WARREN = os.environ.get("WARREN_BIN", os.path.join(ROOT, "target", "debug", "warren"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`hosts`: a file the daemon sees as /etc/hosts (its own mount namespace), for names
    the egress tests make up; `base`: import or build E2B's `base` template; `tls`: serve
    the E2B API over TLS with a self-signed certificate for that domain (`self.cert`)."""

    def __init__(self, hosts: str | None = None, base: bool = True, tls: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="we2b-", dir="/tmp")
        self.env = dict(
            os.environ,
            WARREN_RUN_DIR=os.path.join(self.dir, "run"),
            WARREN_DATA_DIR=os.path.join(self.dir, "data"),
        )
        self.socket = os.path.join(self.dir, "run", "warren.sock")
        self.port = _free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.cert = os.path.join(self.dir, "data", "e2b-tls", "cert.pem") if tls else None
        self.log = open(os.path.join(self.dir, "serve.log"), "wb")
        command = [WARREN, "serve", "--e2b-listen", f"127.0.0.1:{self.port}"]
        if tls:
            command += ["--e2b-tls-self-signed", tls]
        if hosts:
            command = [
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', hosts, *command,
            ]
        self.base = base
        self.proc = subprocess.Popen(
            command,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except Exception:
            self.proc.kill()
            self.proc.wait()
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _wait_ready(self) -> None:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1, context=self._tls()):
                    break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("warren serve did not start: " + self.read_log())
                time.sleep(0.05)
        key_file = os.path.join(self.dir, "data", "api-key")
        while not os.path.exists(key_file):
            time.sleep(0.05)
        with open(key_file) as f:
            self.key = f.read().strip()
        self.other_key = self.run("keys", "create", "--tenant", "other", "--socket", self.socket).strip()
        self._base_template()

    def _base_template(self) -> None:
        """E2B's `base`: imported from a kept archive, or built (debootstrap) and kept."""
        archive = os.environ.get("WARREN_BASE_ARCHIVE")
        if not archive or not self.base:
            return
        if os.path.exists(archive):
            self.run("template", "import", archive, "--name", "base", "--setuid", "--socket", self.socket)
        else:
            self.run("template", "base", "--save", archive, "--socket", self.socket)

    def _tls(self):
        """The harness's own calls reach 127.0.0.1, which the certificate does not name:
        they skip the check (the SDK's calls in the TLS tests make it)."""
        if not self.cert:
            return None
        import ssl

        return ssl._create_unverified_context()

    def run(self, *args: str, check: bool = True) -> str:
        out = subprocess.run([WARREN, *args], env=self.env, capture_output=True, text=True)
        if check and out.returncode != 0:
            raise RuntimeError(f"warren {' '.join(args)}: {out.stderr}")
        return out.stdout

    def read_log(self) -> str:
        with open(os.path.join(self.dir, "serve.log"), "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def api(self, method: str, path: str, key: str):
        req = urllib.request.Request(self.url + path, method=method, headers={"X-API-Key": key})
        with urllib.request.urlopen(req, timeout=30, context=self._tls()) as r:
            body = r.read()
            return json.loads(body) if body else None

    def kill_all(self) -> None:
        for key in (self.key, self.other_key):
            for sb in self.api("GET", "/v2/sandboxes", key) or []:
                try:
                    self.api("DELETE", f"/sandboxes/{sb['sandboxID']}", key)
                except OSError:
                    pass

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def daemon():
    if os.geteuid() != 0:
        pytest.skip("SKIPPED: the E2B tests make real sandboxes and need root")
    d = Daemon()
    use(d)
    try:
        yield d
    finally:
        finish(d)


@contextlib.contextmanager
def restored_env(*keys: str):
    """Puts environment variables `keys` back as they were when the block ends."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


SDK_ENV = ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DOMAIN", "SSL_CERT_FILE")


def use(d: Daemon) -> None:
    """Points the SDK (through its environment variables) at daemon `d`."""
    os.environ["E2B_API_KEY"] = d.key
    os.environ["E2B_API_URL"] = d.url
    os.environ["E2B_SANDBOX_URL"] = d.url


def finish(d: Daemon) -> None:
    """Kills what `d` still runs, stops it, and checks that nothing was left behind."""
    failed = None
    try:
        d.kill_all()
    except Exception as e:  # still stop the daemon and check for leaks
        failed = e
    d.stop()
    doctor = subprocess.run([WARREN, "doctor"], env=d.env, capture_output=True, text=True)
    shutil.rmtree(d.dir, ignore_errors=True)
    assert doctor.returncode == 0, f"warren doctor found leftovers:\n{doctor.stdout}{doctor.stderr}"
    if failed:
        raise failed


def watch_events(handle, until, settle=0.3):
    """Events of `handle` until `until(events)` holds (5 s at most), and any that follow
    within `settle` seconds."""
    events = []
    deadline = time.time() + 5
    while time.time() < deadline and not until(events):
        events += handle.get_new_events()
        time.sleep(0.02)
    time.sleep(settle)
    return events + handle.get_new_events()


def assert_write_events(s, directory):
    """`files.write`'s events in `directory` are envd's (E2B's own tests count them): a new
    file CREATE, CHMOD (envd gives the file to its user), WRITE; an overwrite starts with
    a WRITE."""
    from e2b import FilesystemEventType

    s.files.make_dir(directory)
    handle = s.files.watch_dir(directory)
    s.files.write(f"{directory}/new.txt", "x")
    events = watch_events(handle, lambda ev: len(ev) >= 3)
    assert [(e.type, e.name) for e in events] == [
        (FilesystemEventType.CREATE, "new.txt"),
        (FilesystemEventType.CHMOD, "new.txt"),
        (FilesystemEventType.WRITE, "new.txt"),
    ], events
    s.files.write(f"{directory}/new.txt", "longer text")
    events = watch_events(handle, lambda ev: FilesystemEventType.WRITE in [e.type for e in ev])
    assert events and events[0].type == FilesystemEventType.WRITE, events
    assert all(e.name == "new.txt" for e in events), events
    handle.stop()
