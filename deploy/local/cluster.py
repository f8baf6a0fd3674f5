"""Several replicas of the service behind a real nginx, on loopback: the multi-replica setup on one machine.

    python deploy/local/cluster.py --replicas 2 --port 8080        # then open http://127.0.0.1:8080, Ctrl-C stops

Each replica is ``python -m server`` on its own loopback port; nginx (``/usr/sbin/nginx``, Debian's package) runs
with its own configuration, pid file, logs and temp directories under a private temporary folder and balances
HTTP and WebSocket connections over them, retrying a request whose replica failed on the next one. The tests
(``tests/test_balancer.py``) and ``benchmarks/bench_scale.py`` drive the same ``LocalCluster``.
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

import httpx

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(__file__).with_name("nginx.conf.in")
NGINX = os.environ.get("EMOTION_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, what: str, timeout: float = 60) -> None:
    """Until ``url`` answers 200; fails early, with the log, if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(0.1)


class Replica:
    """One ``python -m server`` process on a fixed loopback port (kept across restarts)."""

    def __init__(self, name: str, port: int, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = port
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_ready(self, timeout: float = 60) -> None:
        wait_http(f"http://{self.address}/readyz", self.proc, f"replica {self.name}", timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Send ``sig`` and wait for the exit; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LocalCluster:
    """``replicas`` service processes behind nginx on 127.0.0.1:``port`` (a free port when 0)."""

    def __init__(self, replicas: int = 2, port: int = 0, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="emotion-cluster-"))
        # nginx started as root hands its temp directories to an unprivileged worker user, who must reach them.
        self.dir.chmod(0o755)
        self.port = port or free_port()
        base_env = {**os.environ, **(env or {})}
        self.replicas = [Replica(f"r{i + 1}", free_port(), base_env, self.dir) for i in range(replicas)]
        self.nginx: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def replica_at(self, address: str) -> Replica:
        return next(r for r in self.replicas if r.address == address)

    def nginx_config(self) -> str:
        servers = "\n".join(f"        server {r.address} max_fails=1 fail_timeout=1s;" for r in self.replicas)
        text = TEMPLATE.read_text()
        for token, value in (("@DIR@", str(self.dir)), ("@PORT@", str(self.port)), ("@SERVERS@", servers)):
            text = text.replace(token, value)
        return text

    def start(self) -> LocalCluster:
        for replica in self.replicas:
            replica.start()
        for replica in self.replicas:
            replica.wait_ready()
        config = self.dir / "nginx.conf"
        config.write_text(self.nginx_config())
        # -e: nginx opens its compiled-in error log before reading the configuration; keep that one here too.
        error_log = str(self.dir / "error.log")
        command = [NGINX, "-p", str(self.dir), "-c", str(config), "-e", error_log, "-g", "daemon off;"]
        self.nginx = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/readyz", self.nginx, "nginx", timeout=20)
        return self

    def rolling_restart(self) -> None:
        """One replica at a time: SIGTERM (drain, finish, exit), start it again, wait until it is ready and nginx
        sends it requests again, then the next one."""
        for replica in self.replicas:
            replica.stop(signal.SIGTERM)
            replica.start()
            replica.wait_ready()
            self.wait_balanced(replica)

    def wait_balanced(self, replica: Replica, timeout: float = 30) -> None:
        """Until nginx answers a request from ``replica``. nginx checks replicas passively: one it found down is
        left alone for ``fail_timeout``; stopping the next replica before that would leave no replica to send to
        (Kubernetes waits for the readiness probe instead)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5) as client:
            while client.get(f"{self.url}/healthz").headers.get("X-Upstream") != replica.address:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx sent nothing to {replica.name} for {timeout:.0f} s")
                time.sleep(0.05)

    def close(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: finish open connections
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        for replica in self.replicas:
            replica.stop(signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1 (default %(default)s)")
    args = parser.parse_args()
    with LocalCluster(args.replicas, args.port) as cluster:
        print(f"{len(cluster.replicas)} replicas ({', '.join(r.address for r in cluster.replicas)}) behind nginx")
        print(f"open {cluster.url}   (logs and nginx files in {cluster.dir}; Ctrl-C stops)")
        try:
            while all(r.proc is not None and r.proc.poll() is None for r in cluster.replicas):
                time.sleep(1)
            print("a replica exited; stopping", file=sys.stderr)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
