"""Shared pieces of the HTTP benchmarks (``scripts/bench/ingest``, ``read``, ``crud``).

Why one module: every benchmark starts its own server on a free port with a throw-away data
folder (and, for PostgreSQL, a throw-away database), measures, and always cleans up, even when
interrupted; and the read benchmarks share the ``wrk`` runner and its output parser.
Traffic only ever goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import http.client
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
FHIR_SERVER = VENV / "bin" / "fhir-server"
DATA = ROOT.parent / "shared" / "data" / "fhir"
HOST = "127.0.0.1"
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def reexec_in_venv(script: str) -> None:
    """Run ``script`` with the project's venv interpreter when started by another Python."""
    if PYTHON.exists() and pathlib.Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(PYTHON), [str(PYTHON), script, *sys.argv[1:]])


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores {cpu} ({platform.system()} {platform.release()}, Python {platform.python_version()})"
    )


def header(title: str) -> None:
    print(f"== {title}")
    print(f"   date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"   machine: {machine()}")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


# -- PostgreSQL ----------------------------------------------------------------------------
@contextlib.contextmanager
def pg_database(prefix: str) -> Iterator[str]:
    """A fresh, empty database; yields its SQLAlchemy URL and drops it afterwards."""
    import psycopg

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def psycopg_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")


def pg_named_url(name: str) -> str:
    """SQLAlchemy URL of the database ``name`` on the ``BENCH_PG`` server (for a kept database)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(PG_ADMIN)
    return urllib.parse.urlunsplit(("postgresql+psycopg", parts.netloc, f"/{name}", parts.query, ""))


# -- the server under test -----------------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    data_dir: pathlib.Path
    log_path: pathlib.Path
    database_url: str = ""

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}/fhir"

    def pids(self) -> list[int]:
        """The process we started and, with ``--workers N``, its forked workers."""
        import psutil

        try:
            top = psutil.Process(self.proc.pid)
            return [top.pid, *(c.pid for c in top.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def worker_pids(self) -> list[int]:
        pids = self.pids()
        return pids[1:] or pids[:1]

    def rss_mb(self) -> dict[int, float]:
        import psutil

        out = {}
        for pid in self.pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                out[pid] = psutil.Process(pid).memory_info().rss / 2**20
        return out

    def peak_rss_mb(self) -> dict[int, float]:
        """High-water mark of each process's RSS (``VmHWM``), in MB."""
        out = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        out[pid] = int(line.split()[1]) / 1024
        return out

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


#: the client a secure server registers at start (``--bootstrap-client``)
BOOTSTRAP = ("bench", "bench-secret-1")


def access_token(port: int, scope: str = "system/*.*", client: tuple[str, str] = BOOTSTRAP) -> str:
    """A client-credentials token of ``client`` (the bootstrap client by default) from a secure server."""
    import base64
    import urllib.parse

    auth = base64.b64encode(":".join(client).encode()).decode()
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": scope})
    conn.request("POST", "/auth/token", body=body, headers={
        "Authorization": f"Basic {auth}", "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    if resp.status != 200:
        raise SystemExit(f"token: HTTP {resp.status} {data}")
    return str(data["access_token"])


@contextlib.contextmanager
def fhir_server(
    database_url: str | None = None,
    workers: int = 1,
    label: str = "server",
    secure: bool = False,
) -> Iterator[Server]:
    """``fhir-server serve`` on a free port with a temporary data folder; stopped afterwards.
    ``secure``: auth and audit on, with the bootstrap client ``BOOTSTRAP``; off unless asked —
    the benchmarks measure FHIR work, ``scripts/bench/security`` compares both."""
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"bench-{label}-"))
    port = free_port()
    # BENCH_FHIR_SERVER: a command to start instead of .venv/bin/fhir-server (e.g. a patched build)
    program = os.environ["BENCH_FHIR_SERVER"].split() if os.environ.get("BENCH_FHIR_SERVER") else [str(FHIR_SERVER)]
    # The log level goes by environment: `fhir-server serve` must come first on the command line,
    # because fhir_server.cli patches for gevent only when argv[1] == "serve".
    cmd = [
        *program,
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--workers",
        str(workers),
        "--no-access-log",
        "--auth",
        "on" if secure else "off",
        "--audit",
        "on" if secure else "off",
    ]
    if secure:
        cmd += ["--bootstrap-client", ":".join(BOOTSTRAP)]
    database_url = database_url or f"sqlite:///{data_dir / 'fhir.db'}"
    cmd += ["--database-url", database_url]
    log_path = data_dir / "server.log"
    log = open(log_path, "wb")
    env = {**os.environ, "FHIR_SERVER_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    server = Server(proc, port, data_dir, log_path, database_url)
    try:
        wait_http(f"http://{HOST}:{port}/healthz", proc=proc)
        if workers > 1:  # every worker imports the app after the fork: wait until all answer
            deadline = time.monotonic() + 30
            while len(server.pids()) < workers + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            warm(server, 4 * workers)
        yield server
    except BaseException:
        tail = server.log_tail()
        if tail:
            print(f"--- server log ({log_path}):\n{tail}", file=sys.stderr)
        raise
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def warm(server: Server, n: int) -> None:
    for _ in range(n):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://{HOST}:{server.port}/readyz", timeout=5).read()


def stop_process(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process we started, wait, then SIGKILL it and the children it forked."""
    import psutil

    if proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.is_running():
                child.kill()


@contextlib.contextmanager
def baseline_server(body: bytes, content_type: str, headers: dict[str, str], path: str) -> Iterator[tuple[int, int]]:
    """The limit of the read benchmark: a minimal Flask app on the same gevent server setup."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    (tmp / "body").write_bytes(body)
    port = free_port()
    cmd = [
        str(PYTHON),
        str(ROOT / "scripts" / "bench" / "_baseline_server.py"),
        "--port",
        str(port),
        "--body",
        str(tmp / "body"),
        "--content-type",
        content_type,
        "--path",
        path,
        *(a for k, v in headers.items() for a in ("--header", f"{k}: {v}")),
    ]
    log_path = tmp / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://{HOST}:{port}{path}", proc=proc)
        yield port, proc.pid
    except BaseException:
        print(f"--- baseline log:\n{log_path.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


# -- wrk -----------------------------------------------------------------------------------
def ensure_wrk() -> str | None:
    """Path of ``wrk``; installs it with apt-get when missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("   wrk not found: installing it with apt-get", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, stdout=subprocess.DEVNULL)
    return shutil.which("wrk")


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors + non-2xx/3xx responses
    raw: str


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot read latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    requests, seconds = int(m.group(1)), _ms(m.group(2) + m.group(3)) / 1e3  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    return WrkResult(requests, seconds, rps, p50, p99, errors, out)


def run_wrk(
    wrk: str,
    url: str,
    threads: int,
    connections: int,
    seconds: float,
    script: str | None = None,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script:
        cmd += ["-s", script]
    assert url.startswith(f"http://{HOST}:"), url  # local traffic only
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return parse_wrk(out)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


# -- profiling (optional, --profile DIR) ---------------------------------------------------
class Profiler:
    """``py-spy record --format raw`` on the given processes while a measurement runs.

    Samples of a process blocked in the kernel (a gevent worker waiting in epoll) are left out
    by py-spy, so the counts are CPU time. Native (C) time counts to the Python function that
    called it. Profiling itself costs a few percent of throughput.
    """

    def __init__(self, pids: list[int], out_dir: str, label: str, rate: int = 250) -> None:
        self.out = pathlib.Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.files: list[pathlib.Path] = []
        self.procs: list[subprocess.Popen] = []
        spy = shutil.which("py-spy") or str(VENV / "bin" / "py-spy")
        if not pathlib.Path(spy).exists():
            print("   (--profile: py-spy not found; `.venv/bin/pip install py-spy`)", flush=True)
            return
        for pid in pids:
            path = self.out / f"{label}-{pid}.txt"
            self.files.append(path)
            self.procs.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--format",
                        "raw",
                        "--nonblocking",
                        "--rate",
                        str(rate),
                        "--pid",
                        str(pid),
                        "-o",
                        str(path),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    def summary(self, top: int = 30) -> str:
        return summarize_collapsed(self.files, top)


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)``, paths shortened to the package."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    for marker in ("site-packages/", "fhir_server/", "python3.11/"):
        if marker in path:
            path = (marker if marker == "fhir_server/" else "") + path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


def summarize_collapsed(files: list[pathlib.Path], top: int = 30) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    from collections import Counter

    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    total = 0
    for path in files:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                stack, _, count = line.rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                n = int(count)
                frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
                if not frames:
                    continue
                total += n
                self_c[frames[-1]] += n
                for f in set(frames):
                    incl_c[f] += n
    if not total:
        return "   (no samples)"
    lines = [f"   {total} samples; self time (where the CPU is):"]
    lines += [f"   {100 * n / total:6.1f}%  {name}" for name, n in self_c.most_common(top)]
    lines.append("   inclusive time (function and everything it calls):")
    lines += [f"   {100 * n / total:6.1f}%  {name}" for name, n in incl_c.most_common(top + 20)]
    return "\n".join(lines)


# -- where the machine's CPU went during a measurement ----------------------------------------
class CpuMeter:
    """CPU seconds used by the server, its PostgreSQL backends, the load generator and the rest.

    On 2 cores the database and the load generator compete with the server for CPU, and so
    does anything else running on the machine: "other" (machine busy time minus the groups)
    says whether the figures were taken on a quiet machine. Read-only use of psutil.
    PostgreSQL backends count when their command line names ``database``.
    """

    def __init__(
        self, server_pids: list[int], database: str | None = None, client_pids: list[int] | None = None
    ) -> None:
        self.database = database
        self.groups = {
            "server": lambda: server_pids,
            "postgres": self._postgres_pids,
            "load generator": lambda: client_pids if client_pids is not None else [os.getpid()],
        }
        self.start = {name: self._cpu(get()) for name, get in self.groups.items()}
        self.machine0 = self._machine_busy()
        self.t0 = time.perf_counter()

    @staticmethod
    def _machine_busy() -> float:
        import psutil

        t = psutil.cpu_times()  # process time only (interrupt handling is nobody's)
        return t.user + t.nice + t.system

    @staticmethod
    def _cpu(pids: list[int]) -> dict[int, float]:
        import psutil

        out = {}
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                t = psutil.Process(pid).cpu_times()
                out[pid] = t.user + t.system + t.children_user + t.children_system
        return out

    def _postgres_pids(self) -> list[int]:
        import psutil

        if not self.database:
            return []
        out = []
        for p in psutil.process_iter(["name", "cmdline"]):
            if p.info["name"] in ("postgres", "postmaster") and self.database in " ".join(p.info["cmdline"] or ()):
                out.append(p.pid)
        return out

    def stop(self) -> dict[str, float]:
        self.wall = time.perf_counter() - self.t0
        self.used = {}
        for name, get in self.groups.items():
            end = self._cpu(get())
            per_pid = {pid: v - self.start[name].get(pid, 0.0) for pid, v in end.items()}
            self.used[name] = sum(per_pid.values())
            if name == "server":
                self.per_server_pid = per_pid
        self.used["other processes"] = max(0.0, self._machine_busy() - self.machine0 - sum(self.used.values()))
        return self.used

    def text(self) -> str:
        cores = os.cpu_count() or 1
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in self.used.items())
        if len(self.per_server_pid) > 1:
            parts += f" (per server process: {' + '.join(f'{v:.1f}s' for v in self.per_server_pid.values())})"
        out = f"cpu in the timed part ({self.wall:.1f}s x {cores} cores = {self.wall * cores:.1f} core-s): {parts}"
        if self.used["other processes"] > 0.1 * self.wall * cores:
            out += "\n   WARNING: other processes used over 10% of the machine; figures are not from a quiet machine"
        return out
