"""An S3 stand-in that is fast where S3 is fast: nginx serving a directory as a bucket.

moto_server is CPU-bound Python that reads the whole object for every ranged GET: it
rewards few requests and punishes streams, the opposite of a real bucket, where each
connection is capped (about 80 MB/s) and a client may open as many as it likes. nginx
(Debian `nginx-light`, `make bench-deps`) on 127.0.0.1 with `limit_rate` per
connection behaves like that: GET with Range and HEAD of `/<bucket>/<key>` (path-style
addressing, which botocore uses for an IP endpoint), byte-exact, ETag and
Content-Length as S3 sends them, unsigned (signatures are not checked). No listing, no
writes: write the bucket's directory directly (`strato push ... --registry
file://<root>/<bucket>/registry`). Keep moto for API fidelity; use this for speed.

    with S3StandIn(root, rate_mb=80) as s3:   # s3.endpoint, s3.env() for AWS_*
        ...
    .venv/bin/python bench/s3_standin.py ROOT [--rate 80] [--port 0]   # until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """\
daemon off;
user root;
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        limit_rate {rate};
        location / {{
            limit_except GET {{ deny all; }}
            error_page 403 404 = @nosuchkey;
        }}
        location @nosuchkey {{
            default_type application/xml;
            return 404 '<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>';
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3StandIn:
    """nginx on 127.0.0.1 serving `root` (each top-level folder a bucket), every
    connection capped at `rate_mb` MB/s (0: no cap). A context manager; `env()` gives
    the AWS_* variables that point boto3, s3fs and strato at it."""

    def __init__(self, root: Path | str, *, rate_mb: float = 80.0, port: int = 0,
                 workers: int = 2) -> None:
        self.root = Path(root).resolve()
        self.rate_mb, self.workers = rate_mb, workers
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._work: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "standin",
                "AWS_SECRET_ACCESS_KEY": "standin", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def __enter__(self) -> "S3StandIn":
        if not os.path.exists(NGINX):
            raise RuntimeError("nginx is not installed: run `make bench-deps` "
                               "(Debian package nginx-light)")
        self._work = Path(tempfile.mkdtemp(prefix="strato-standin-"))
        rate = f"{int(self.rate_mb * 1e6)}" if self.rate_mb > 0 else "0"
        conf = self._work / "nginx.conf"
        conf.write_text(CONFIG.format(workers=self.workers, work=self._work, port=self.port,
                                      root=self.root, rate=rate))
        self._proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(self._work)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr \
                    else ""
                raise RuntimeError(f"nginx exited with {self._proc.returncode}: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("nginx did not start listening")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        self._proc = None
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="directory whose folders are the buckets")
    parser.add_argument("--rate", type=float, default=80.0, help="MB/s per connection "
                        "(default 80; 0 = unlimited)")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with S3StandIn(args.root, rate_mb=args.rate, port=args.port) as s3:
        print(" ".join(f"{k}={v}" for k, v in s3.env().items()), flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
