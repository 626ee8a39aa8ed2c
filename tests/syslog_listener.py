"""Audit Record Repositories for tests: a TLS syslog listener that requires client certificates and
parses RFC 5425 octet counting, and a UDP one (issue 5: ITI-20 export)."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

WAIT = 5.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class TlsSyslogListener:
    """An Audit Record Repository stand-in: mutual TLS required, RFC 5425 octet counting parsed."""

    cert: Path
    key: Path
    client_ca: Path
    port: int = 0
    maximum_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
    messages: list[bytes] = field(default_factory=list)
    connections: int = 0
    versions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context.maximum_version = self.maximum_version
        self._context.load_cert_chain(self.cert, self.key)
        self._context.load_verify_locations(self.client_ca)
        self._context.verify_mode = ssl.CERT_REQUIRED
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", self.port))
        self.port = self._server.getsockname()[1]
        self._server.listen()
        self._server.settimeout(0.05)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._open: list[ssl.SSLSocket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            worker.start()
            self._threads.append(worker)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(WAIT)
            with self._context.wrap_socket(conn, server_side=True) as tls:
                with self._lock:
                    self.versions.append(tls.version() or "")
                    self._open.append(tls)
                buffer = b""
                while True:
                    frame, buffer = self._frame(tls, buffer)
                    if frame is None:
                        return
                    with self._lock:
                        self.messages.append(frame)
        except Exception as exc:  # noqa: BLE001 - a listener thread must not raise into pytest
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    @staticmethod
    def _frame(tls: ssl.SSLSocket, buffer: bytes) -> tuple[bytes | None, bytes]:
        """One ``MSG-LEN SP SYSLOG-MSG`` frame (RFC 5425 §4.3), or None at a clean end of stream."""
        while b" " not in buffer:
            chunk = tls.recv(65536)
            if not chunk:
                if buffer:
                    raise ValueError(f"stream ended inside a frame header: {buffer!r}")
                return None, b""
            buffer += chunk
        length_text, buffer = buffer.split(b" ", 1)
        if not re.fullmatch(rb"[1-9][0-9]*", length_text):
            raise ValueError(f"bad MSG-LEN {length_text!r}")
        length = int(length_text)
        while len(buffer) < length:
            chunk = tls.recv(65536)
            if not chunk:
                raise ValueError("stream ended inside a frame")
            buffer += chunk
        return buffer[:length], buffer[length:]

    def wait_for(self, count: int) -> list[bytes]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.01)
        with self._lock:
            return list(self.messages)

    def drop_connections(self) -> None:
        """Close every accepted connection, as a restarting repository would."""
        with self._lock:
            connections, self._open = self._open, []
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for thread in self._threads:
            thread.join(WAIT)


class UdpSyslogListener:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(WAIT)
        self.port = self.sock.getsockname()[1]

    def receive(self) -> bytes:
        data, _ = self.sock.recvfrom(70_000)
        return data

    def close(self) -> None:
        self.sock.close()
