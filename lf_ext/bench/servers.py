"""Child servers for benchmarks and tests: a throw-away ``redis-server`` and ``llamafactory-cli api`` replicas.

Both listen on 127.0.0.1 on a free port and log to a file; both are context managers that stop the
process they started (and only that one).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen | None, timeout: float = 60) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(ready, proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    """Poll ``ready()`` until true; raise with the log's tail if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not listening yet (OSError, redis.ConnectionError, ...)
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    _stop(proc)
    raise RuntimeError(f"{what} did not start (exit code {proc.poll()}, {timeout:.0f} s):\n{tail}")


class RedisServer:
    """``redis-server`` on 127.0.0.1 with no persistence, in a temporary folder; :meth:`stop` and
    :meth:`start` again keep the port (an outage, then an empty Redis at the same address)."""

    def __init__(self, port: int | None = None, directory: str | Path | None = None):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise FileNotFoundError("redis-server not found (Debian: apt-get install redis-server; scripts/setup.sh does it as root)")
        self.port = port or free_port()
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="lf_ext_redis_")
        self.directory = Path(directory or self._tmp.name)
        self.log = self.directory / "redis.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs):
        import redis

        return redis.Redis.from_url(self.url, **kwargs)

    def start(self) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--logfile", str(self.log)]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = self.client(socket_timeout=1)
        _wait(client.ping, self.proc, f"redis-server on port {self.port}", self.log, 30)
        client.close()
        return self

    def stop(self) -> None:
        _stop(self.proc, timeout=10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: Redis accepts connections but answers nothing (a stalled server) until :meth:`resume`."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.resume()  # a paused server cannot handle SIGTERM
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def child_env(**extra: str) -> dict[str, str]:
    """This environment with this interpreter's bin first on PATH (``llamafactory-cli``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LF_EXT_DISABLE", "FORCE_TORCHRUN", "NPROC_PER_NODE")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("DISABLE_VERSION_CHECK", "1")
    env.update(extra)
    return env


class ApiReplica:
    """``llamafactory-cli api RECIPE`` on 127.0.0.1 with its log in ``workdir/NAME.log``."""

    def __init__(self, workdir: str | Path, name: str, recipe: dict, **env: str):
        self.workdir, self.name = Path(workdir), name
        self.port, self.log = free_port(), Path(workdir) / f"{name}.log"
        self.recipe = self.workdir / f"{name}.yaml"
        self.recipe.write_text(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in recipe.items()}))
        self.env = child_env(API_HOST="127.0.0.1", API_PORT=str(self.port), API_VERBOSE="0", **env)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> "ApiReplica":
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(["llamafactory-cli", "api", str(self.recipe)], cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env)  # fmt: skip
        _wait(lambda: urllib.request.urlopen(f"{self.url}/v1/models", timeout=2).status == 200, self.proc,
              f"llamafactory-cli api ({self.name})", self.log, timeout)  # fmt: skip
        return self

    def rss_mb(self) -> float:
        """Resident memory of the server process (``VmRSS`` from /proc), MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.proc.pid}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> "ApiReplica":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
