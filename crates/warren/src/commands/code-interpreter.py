"""Warren's code interpreter server: E2B's code-interpreter protocol on port 49999,
over real Jupyter kernels (ipykernel for Python, bash_kernel for bash).

  GET    /health                   200 while serving
  POST   /execute                  {code, context_id?, language?, env_vars?}: NDJSON lines
                                   (stdout, stderr, result, error, number_of_executions,
                                   end_of_execution) as the kernel produces them
  POST   /contexts                 {language?, cwd?}: a new context (its own kernel)
  GET    /contexts                 every context
  POST   /contexts/{id}/restart    a fresh kernel, state gone
  DELETE /contexts/{id}            the kernel shut down

A context is one kernel; executions in it run one at a time, in order. A client that
goes away mid-execution (its timeout passed) interrupts the kernel. A kernel that dies
is reported as an error and started again for the next execution.

Written for Warren's `code-interpreter-v1` template (`warren template code-interpreter`);
only the standard library and jupyter_client are used.
"""

import json
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jupyter_client.manager import KernelManager

PORT = int(os.environ.get("WARREN_CI_PORT", "49999"))
HOME = os.path.expanduser("~")
KERNELS = {"python": "python3", "bash": "bash"}
ALIASES = {"python3": "python", "py": "python", "sh": "bash", "shell": "bash"}
START_TIMEOUT = 60


def now_ns() -> int:
    return time.time_ns()


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def language_of(name):
    lang = (name or "python").lower()
    lang = ALIASES.get(lang, lang)
    if lang not in KERNELS:
        raise HttpError(
            400,
            f"language {name!r} is not available in this template: use one of "
            + ", ".join(sorted(KERNELS)),
        )
    return lang


class Context:
    """One kernel and what runs in it."""

    def __init__(self, language: str, cwd: str):
        self.id = str(uuid.uuid4())
        self.language = language
        self.cwd = cwd
        self.lock = threading.Lock()
        self.km = None
        self.kc = None
        self.start()

    def info(self) -> dict:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    def start(self) -> None:
        if not os.path.isdir(self.cwd):
            raise HttpError(400, f"cwd {self.cwd!r} is not a directory")
        km = KernelManager(kernel_name=KERNELS[self.language])
        env = dict(os.environ)
        env.pop("WARREN_CI_PORT", None)
        km.start_kernel(cwd=self.cwd, env=env)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=START_TIMEOUT)
        except RuntimeError:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
            raise HttpError(500, f"the {self.language} kernel did not start")
        self.km, self.kc = km, kc

    def stop(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None:
            try:
                self.km.shutdown_kernel(now=True)
            except Exception:
                pass
        self.km = self.kc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def env_code(self, env: dict):
        """Code that sets `env` for one execution, and code that puts it back."""
        if not env:
            return None, None
        if self.language == "python":
            saved = "__warren_env_saved"
            set_code = (
                f"import os as __warren_os\n{saved} = {{k: __warren_os.environ.get(k) for k in {list(env)!r}}}\n"
                f"__warren_os.environ.update({dict(env)!r})\n"
            )
            reset = (
                f"for __k, __v in {saved}.items():\n"
                "    if __v is None: __warren_os.environ.pop(__k, None)\n"
                "    else: __warren_os.environ[__k] = __v\n"
                f"del {saved}, __k, __v\n"
            )
            return set_code, reset
        quote = lambda v: "'" + str(v).replace("'", "'\\''") + "'"
        names = [k for k in env if k.replace("_", "a").isalnum()]
        save = " ".join(f"__warren_{k}=${{{k}-__warren_unset}}" for k in names)
        set_code = f"{save}; " + " ".join(f"export {k}={quote(env[k])};" for k in names)
        reset = " ".join(
            f'if [ "$__warren_{k}" = __warren_unset ]; then unset {k}; else export {k}="$__warren_{k}"; fi; unset __warren_{k};'
            for k in names
        )
        return set_code, reset

    def run_silent(self, code: str) -> None:
        msg_id = self.kc.execute(code, silent=True, store_history=False)
        self.wait_idle(msg_id, deadline=time.monotonic() + 30)

    def wait_idle(self, msg_id: str, deadline: float) -> bool:
        """Whether the kernel went idle after `msg_id` (or died) before `deadline`."""
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if not self.km.is_alive():
                    return True
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return True
        return False

    def execute(self, code: str, env: dict, gone):
        """Yields the protocol's lines for one execution; `gone()` says whether the
        client went away (then the kernel is interrupted)."""
        with self.lock:
            if self.km is None or not self.km.is_alive():
                self.restart()
            set_env, reset_env = self.env_code(env)
            if set_env:
                self.run_silent(set_env)
            try:
                yield from self._execute(code, gone)
            finally:
                if reset_env and self.km is not None and self.km.is_alive():
                    self.run_silent(reset_env)

    def _execute(self, code: str, gone):
        msg_id = self.kc.execute(code, store_history=True, allow_stdin=False)
        state = {"interrupted": False}
        finished = False
        try:
            yield from self._messages(msg_id, gone, state)
            finished = True
        finally:
            # Closed early (the client went away while a line was being sent): the
            # code is still running. Interrupt it once and let the kernel settle
            # before the lock is let go, so no interrupt lands in the next execution.
            if not finished and self.km is not None and self.km.is_alive():
                ended = self.wait_idle(msg_id, deadline=time.monotonic() + 0.05)
                if not ended and not state["interrupted"]:
                    self.km.interrupt_kernel()
                self.wait_idle(msg_id, deadline=time.monotonic() + 10)

    def _messages(self, msg_id: str, gone, state: dict):
        started = False
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                if not self.km.is_alive():
                    yield {
                        "type": "error",
                        "name": "DeadKernelError",
                        "value": "the kernel died while running this code; it is started again, its state is gone",
                        "traceback": "",
                    }
                    self.restart()
                    return
                if not state["interrupted"] and gone():
                    state["interrupted"] = True
                    self.km.interrupt_kernel()
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            content = msg["content"]
            if kind == "stream":
                name = content.get("name")
                if name in ("stdout", "stderr"):
                    yield {"type": name, "text": content.get("text", ""), "timestamp": now_ns()}
            elif kind in ("execute_result", "display_data"):
                yield result(content.get("data", {}), kind == "execute_result")
            elif kind == "error":
                yield {
                    "type": "error",
                    "name": content.get("ename", ""),
                    "value": content.get("evalue", ""),
                    "traceback": "\n".join(content.get("traceback", [])),
                }
            elif kind == "execute_input":
                started = True
                yield {"type": "number_of_executions", "execution_count": content.get("execution_count", 0)}
            elif kind == "status" and content.get("execution_state") == "idle" and started:
                return


FORMATS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}


def result(data: dict, main: bool) -> dict:
    out = {"type": "result", "is_main_result": main}
    extra = {}
    for mime, value in data.items():
        key = FORMATS.get(mime)
        if key:
            out[key] = value
        else:
            extra[mime] = value
    if extra:
        out["extra"] = extra
    return out


class Contexts:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_id = {}
        self.defaults = {}

    def default(self, language: str) -> Context:
        with self.lock:
            ctx = self.defaults.get(language)
            if ctx is None:
                ctx = Context(language, HOME)
                self.defaults[language] = ctx
                self.by_id[ctx.id] = ctx
            return ctx

    def create(self, language: str, cwd: str) -> Context:
        ctx = Context(language, cwd)
        with self.lock:
            self.by_id[ctx.id] = ctx
        return ctx

    def get(self, context_id: str) -> Context:
        with self.lock:
            ctx = self.by_id.get(context_id)
        if ctx is None:
            raise HttpError(404, f"context {context_id!r} not found")
        return ctx

    def remove(self, context_id: str) -> None:
        with self.lock:
            ctx = self.by_id.pop(context_id, None)
            for lang, d in list(self.defaults.items()):
                if d is ctx:
                    del self.defaults[lang]
        if ctx is None:
            raise HttpError(404, f"context {context_id!r} not found")
        ctx.stop()

    def all(self):
        with self.lock:
            return list(self.by_id.values())


CONTEXTS = Contexts()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "warren-code-interpreter"

    def log_message(self, fmt, *args):
        pass

    def body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if n > 64 << 20:
            raise HttpError(413, "the request is larger than 64 MiB")
        raw = self.rfile.read(n) if n else b""
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except ValueError as e:
            raise HttpError(400, f"the body is not JSON: {e}")
        if not isinstance(value, dict):
            raise HttpError(400, "the body must be a JSON object")
        return value

    def reply(self, status: int, value) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def fail(self, e: HttpError) -> None:
        data = e.message.encode()
        self.send_response(e.status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        parts = path.strip("/").split("/")
        try:
            if method == "GET" and path == "/health":
                return self.reply(200, "ok")
            if method == "POST" and path == "/execute":
                return self.execute(self.body())
            if path == "/contexts":
                if method == "POST":
                    req = self.body()
                    ctx = CONTEXTS.create(language_of(req.get("language")), req.get("cwd") or HOME)
                    return self.reply(200, ctx.info())
                if method == "GET":
                    return self.reply(200, [c.info() for c in CONTEXTS.all()])
            if len(parts) == 3 and parts[0] == "contexts" and parts[2] == "restart" and method == "POST":
                ctx = CONTEXTS.get(parts[1])
                with ctx.lock:
                    ctx.restart()
                return self.reply(200, ctx.info())
            if len(parts) == 2 and parts[0] == "contexts" and method == "DELETE":
                CONTEXTS.remove(parts[1])
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            raise HttpError(404, f"no route {method} {path}")
        except HttpError as e:
            self.fail(e)

    def execute(self, req: dict) -> None:
        code = req.get("code")
        if not isinstance(code, str):
            raise HttpError(400, "code is required")
        if req.get("context_id") and req.get("language"):
            raise HttpError(400, "give context_id or language, not both")
        if req.get("context_id"):
            ctx = CONTEXTS.get(req["context_id"])
        else:
            ctx = CONTEXTS.default(language_of(req.get("language")))
        env = req.get("env_vars") or {}
        if not isinstance(env, dict):
            raise HttpError(400, "env_vars must be an object")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sock = self.connection

        def gone() -> bool:
            # Readable with nothing to read: the client closed its end.
            try:
                r, _, _ = select.select([sock], [], [], 0)
                return bool(r) and sock.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        run = ctx.execute(code, {str(k): str(v) for k, v in env.items()}, gone)
        try:
            for line in run:
                self.chunk(json.dumps(line) + "\n")
            self.chunk(json.dumps({"type": "end_of_execution"}) + "\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            # An execution still running is interrupted by its own close, and only
            # then: an interrupt sent after it ended would hit the next one.
            run.close()

    def chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")


def main() -> None:
    os.chdir(HOME)
    # The default Python context is ready before the first request.
    CONTEXTS.default("python")
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True

    def stop(*_):
        for ctx in CONTEXTS.all():
            ctx.stop()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"code interpreter listening on {PORT}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
