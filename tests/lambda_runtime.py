"""The Lambda Runtime API on 127.0.0.1, and the function process it drives.

Real Lambda runs a Python function as `python -m awslambdaric HANDLER`: the runtime
interface client (AWS's C++ client, aws-lambda-cpp, for the invocation loop) polls
`GET /2018-06-01/runtime/invocation/next`, posts each answer to `.../{id}/response` or
`.../{id}/error`, reports a failed import to `/runtime/init/error`, and under SnapStart
(`AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`) runs the before-snapshot hooks, parks on
`/runtime/restore/next` until the environment is restored, then runs the after-restore
hooks (a failure goes to `/runtime/restore/error`). `RuntimeApi` serves those endpoints
with the headers Lambda sends; `Function` starts the real client against it with the
environment Lambda sets, and plays Lambda's part: the init time limit (an init that
overruns is killed and run again inside the first invoke), invocations, freezing
(SIGSTOP/SIGCONT) and restores.

HTTP/1.1 with keep-alive and exact Content-Length on every answer: aws-lambda-cpp
(libcurl) crashes on an HTTP/1.0 peer. Every wait is on a queue fed by the server or by
the function's output, never a sleep.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/2018-06-01/runtime"
FUNCTION = "strato-test"
ARN = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}"
WAIT = 600.0            # the longest any harness wait may take before the test fails


@dataclass
class Answer:
    """What the function posted for one invocation."""

    request_id: str
    ok: bool                        # /response (True) or /error (False)
    body: Any                       # the decoded JSON payload
    error_type: str | None = None   # Lambda-Runtime-Function-Error-Type on /error


@dataclass
class Lifecycle:
    """One runtime-level event: "next" (a worker polls: its init is over), "init_error",
    "restore_next" (SnapStart: the snapshot point), "restore_error"."""

    kind: str
    body: Any = None
    error_type: str | None = None
    at: float = field(default_factory=time.monotonic)


class RuntimeApi:
    """The endpoints of the Lambda Runtime API, for one execution environment.

    `invoke(event)` queues an event for the next `/invocation/next` and returns a queue
    its Answer arrives on. `lifecycle` receives a Lifecycle for each runtime event.
    `restore()` answers the pending `/restore/next` (the environment "resumes").
    """

    def __init__(self) -> None:
        self.pending: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.answers: dict[str, queue.Queue[Answer]] = {}
        self.lifecycle: queue.Queue[Lifecycle] = queue.Queue()
        self._restored = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"       # keep-alive; aws-lambda-cpp needs it

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == f"{PREFIX}/invocation/next":
                    api.lifecycle.put(Lifecycle("next"))
                    request_id, body = api.pending.get()
                    deadline = int(time.time() * 1000) + 900_000
                    self._send(200, body, {
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(deadline),
                        "Lambda-Runtime-Invoked-Function-Arn": ARN,
                        "Lambda-Runtime-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793;"
                                                   "Parent=53995c3f42cd8ad8;Sampled=0"})
                elif self.path == f"{PREFIX}/restore/next":
                    api.lifecycle.put(Lifecycle("restore_next"))
                    api._restored.wait()
                    self._send(200, b"")
                else:
                    self._send(404, b'{"errorMessage": "unknown path"}')

            def do_POST(self) -> None:
                body = self._body()
                kind = self.headers.get("Lambda-Runtime-Function-Error-Type")
                parts = self.path[len(PREFIX):].strip("/").split("/")
                if parts[:1] == ["invocation"] and len(parts) == 3 \
                        and parts[2] in ("response", "error"):
                    box = api.answers.get(parts[1])
                    if box is None:
                        self._send(400, b'{"errorMessage": "unknown request id"}')
                        return
                    box.put(Answer(parts[1], parts[2] == "response", _json(body), kind))
                    self._send(202, b'{"status": "OK"}')
                elif parts in (["init", "error"], ["restore", "error"]):
                    api.lifecycle.put(Lifecycle(f"{parts[0]}_error", _json(body), kind))
                    self._send(202, b'{"status": "OK"}')
                else:
                    self._send(404, b'{"errorMessage": "unknown path"}')

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while (size := int(self.rfile.readline().split(b";")[0], 16)):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return out
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, body: bytes,
                      headers: Mapping[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def invoke(self, event: Mapping[str, Any]) -> queue.Queue[Answer]:
        request_id = str(uuid.uuid4())
        box: queue.Queue[Answer] = queue.Queue()
        self.answers[request_id] = box
        self.pending.put((request_id, json.dumps(event).encode()))
        return box

    def restore(self) -> None:
        self._restored.set()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A killed function drops its keep-alive connection: that is not an error."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError)):
            super().handle_error(request, client_address)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return body.decode(errors="replace")


def lambda_env(api: RuntimeApi, init_type: str = "on-demand",
               extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables Lambda sets for a python3.12 function, pointed at `api`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STRATO_"))}
    env.update({
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST" if init_type != "snap-start" else "1",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/01/[$LATEST]0123456789abcdef",
        "AWS_LAMBDA_INITIALIZATION_TYPE": init_type,
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
        "LAMBDA_TASK_ROOT": str(ROOT), "LAMBDA_RUNTIME_DIR": str(ROOT),
        "_HANDLER": "handlers.aws_lambda.handler",
        "TZ": ":UTC", "PYTHONPATH": str(ROOT),
        "POWERTOOLS_SERVICE_NAME": "strato", "POWERTOOLS_METRICS_NAMESPACE": "strato",
    })
    env.update(extra or {})
    return env


class Function:
    """`python -m awslambdaric handlers.aws_lambda.handler` under `api`, as Lambda runs it.

    `init_limit` (seconds) plays Lambda's on-demand init limit: an init that has not
    polled for work by then is killed and started again with no limit (Lambda re-runs
    a timed-out init inside the first invoke, under the function timeout).
    `workers` is how many processes poll (AWS_LAMBDA_MAX_CONCURRENCY's worker count).
    """

    def __init__(self, api: RuntimeApi, env: Mapping[str, str], *,
                 init_limit: float | None = None, workers: int = 1) -> None:
        self.api, self.env, self.init_limit, self.workers = api, dict(env), init_limit, workers
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.line_events: queue.Queue[str] = queue.Queue()
        self.killed_inits = 0
        self.init_seconds: float | None = None

    # -- process --------------------------------------------------------------------

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", "handlers.aws_lambda.handler"],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.line_events.put(line)

    def start(self) -> Lifecycle:
        """Run init; returns the event that ended it: "next" (from every worker),
        "init_error" or "restore_next" (SnapStart's snapshot point)."""
        started = time.monotonic()
        self._spawn()
        try:
            end = self._wait_init(self.init_limit)
        except queue.Empty:
            if self.init_limit is None:
                raise
            self.kill()                       # the init overran Lambda's limit
            self.killed_inits += 1
            self._spawn()
            end = self._wait_init(None)
        self.init_seconds = end.at - started
        return end

    def _wait_init(self, limit: float | None) -> Lifecycle:
        deadline = time.monotonic() + (limit if limit is not None else WAIT)
        polls = 0
        while True:
            event = self.api.lifecycle.get(timeout=max(0.0, deadline - time.monotonic()))
            if event.kind == "next":
                polls += 1
                if polls < self.workers:
                    continue
            return event

    def invoke(self, event: Mapping[str, Any], timeout: float = WAIT) -> Answer:
        return self.api.invoke(event).get(timeout=timeout)

    def freeze(self) -> None:
        """Lambda freezes an idle environment between invocations (SIGSTOP to the group)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def pids(self) -> list[int]:
        """The client process and its forked workers (Managed Instances)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [self.proc.pid] + [int(p) for p in children.read_text().split()]

    # -- output ---------------------------------------------------------------------

    def json_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def wait_line(self, text: str, timeout: float = WAIT) -> str:
        """Block until the function prints a line containing `text` (or has already)."""
        for line in list(self.lines):
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while True:
            line = self.line_events.get(timeout=max(0.0, deadline - time.monotonic()))
            if text in line:
                return line



def drain(api: RuntimeApi) -> list[Lifecycle]:
    """Lifecycle events already queued (no wait)."""
    out = []
    while True:
        try:
            out.append(api.lifecycle.get_nowait())
        except queue.Empty:
            return out
