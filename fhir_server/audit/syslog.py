"""ITI-20 export: audit messages as RFC 5424 syslog over TLS (RFC 5425) or UDP (RFC 5426), with
store and forward.

Why these pieces:

* ``format_rfc5424`` builds the message IHE ITI TF-2 3.20.4.1.2 asks for: PRI ``<85>`` (facility
  10 security/authorization, severity 5 notice), VERSION 1, no STRUCTURED-DATA, MSGID
  ``IHE+RFC-3881``, and the DICOM ``AuditMessage`` XML as MSG.
* ``TlsSyslogSender`` frames with octet counting (RFC 5425 §4.3) over TLS 1.2 or 1.3 with the
  repository's certificate verified and our certificate presented (mutual TLS, ITI-19); one
  connection carries a whole batch. ``UdpSyslogSender`` sends one message per datagram
  (RFC 5426 §3.1). The Audit Record Repository must accept both (ITI-20 §3.20.4.1.2).
* ``AuditForwarder`` stores every message in a spool directory before any attempt to send it
  and deletes it only once sent: "if the repository is unreachable, store and forward"
  (ITI-20 §3.20.7.1). Delivery is at-least-once: syslog has no acknowledgement (RFC 5424 §8.5,
  "Reliable Delivery"), so a message counts as sent once the kernel has taken all of its bytes.
  A process that dies between that and the unlink sends it again on the next pass (a repeat at
  the repository); a repository that dies while the bytes are in flight may lose them.

The core does not import gevent; under the server's monkey-patching these sockets cooperate.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import select
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from lxml import etree

from fhir_server.audit.dicom_xml import audit_message_xml

#: ITI-20 §3.20.4.1.2: facility 10 (security/authorization) * 8 + severity 5 (notice)
ITI20_PRI = 85
ITI20_MSGID = "IHE+RFC-3881"
NILVALUE = "-"
#: RFC 5424 §6.4: a UTF-8 MSG starts with the byte order mark
BOM = b"\xef\xbb\xbf"
#: RFC 5426 §3.2: the largest syslog payload one UDP datagram carries (65535 less IP and UDP headers)
MAX_UDP_PAYLOAD = {socket.AF_INET: 65_507, socket.AF_INET6: 65_527}
#: ITI-19 (BCP 195 option): TLS 1.2 suites limited to (EC)DHE key exchange with AES-GCM; TLS 1.3 suites are all AEAD
TLS12_CIPHERS = "ECDHE+AESGCM:DHE+AESGCM"
#: how long to wait after a TLS 1.3 handshake for the server's verdict on our certificate
TLS13_CONFIRM_SECONDS = 2.0

#: RFC 5424 §6 header field -> longest allowed length (PRINTUSASCII %d33-126)
_HEADER_LENGTHS = {"hostname": 255, "app_name": 48, "procid": 128, "msgid": 32}
_PRINTUSASCII = re.compile(r"^[\x21-\x7e]+$")
#: spool file name: enqueue time (ns since the epoch), process id, per-process sequence number
_SPOOL_NAME = re.compile(r"^(\d{20})-(\d{10})-(\d{12})\.xml$")
_LOCK_NAME = ".deliver.lock"
REJECTED_DIR = "rejected"


class SyslogMessageTooLarge(ValueError):
    """A message that the transport can never carry (over the UDP datagram limit)."""


def format_rfc5424(
    message: bytes,
    *,
    hostname: str,
    app_name: str,
    procid: str,
    timestamp: datetime,
    msgid: str = ITI20_MSGID,
    pri: int = ITI20_PRI,
) -> bytes:
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`` (RFC 5424 §6).

    The MSG is the UTF-8 XML prefixed with a byte order mark: RFC 5424 §6.4 says a MSG encoded in
    UTF-8 MUST start with the BOM so a collector knows it is Unicode; an XML parser accepts a BOM
    before the XML declaration (XML 1.0 §4.3.3), and widely used ATNA senders (e.g. IPF) send
    exactly BOM + declaration + AuditMessage. A message that already starts with a BOM keeps it
    (no second one). ``message`` must be valid UTF-8 (ITI-20 requires UTF-8 XML). The timestamp
    must carry its time zone; it is written in UTC with microseconds, as RFC 3339 with the limits
    of §6.2.3 (upper-case ``T`` and ``Z``, at most six fractional digits).
    """
    if not isinstance(pri, int) or isinstance(pri, bool) or not 0 <= pri <= 191:
        raise ValueError(f"PRI {pri!r} is not 0..191 (facility 0-23 * 8 + severity 0-7)")
    fields = {"hostname": hostname, "app_name": app_name, "procid": procid, "msgid": msgid}
    for name, value in fields.items():
        _check_header_field(name, value)
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (RFC 5424 §6.2.3 requires an offset)")
    if not isinstance(message, bytes | bytearray):
        raise ValueError("message must be bytes")
    try:
        bytes(message).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"message is not valid UTF-8: {exc}") from exc
    when = timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = f"<{pri}>1 {when} {hostname} {app_name} {procid} {msgid} {NILVALUE} "
    body = bytes(message) if message.startswith(BOM) else BOM + bytes(message)
    return header.encode("ascii") + body


def _check_header_field(name: str, value: Any) -> None:
    """RFC 5424 §6: header fields are 1*N PRINTUSASCII (or NILVALUE ``-``)."""
    limit = _HEADER_LENGTHS[name]
    if not isinstance(value, str) or not _PRINTUSASCII.match(value):
        raise ValueError(f"syslog {name.upper()} {value!r} must be non-empty printable US-ASCII without spaces")
    if len(value) > limit:
        raise ValueError(f"syslog {name.upper()} is {len(value)} characters; RFC 5424 §6 allows {limit}")


def octet_counted(syslog_message: bytes) -> bytes:
    """RFC 5425 §4.3: ``SYSLOG-FRAME = MSG-LEN SP SYSLOG-MSG``, MSG-LEN counting octets."""
    if not syslog_message:
        raise ValueError("an empty syslog message cannot be framed (MSG-LEN starts with a non-zero digit)")
    return str(len(syslog_message)).encode("ascii") + b" " + syslog_message


@dataclass(frozen=True)
class SyslogTarget:
    """Where the Audit Record Repository listens and how we authenticate to it (ITI-19).

    ``ca_file`` holds the trust anchors for the repository's certificate (None: the system
    store; verification is never off). ``cert_file``/``key_file`` are our client certificate
    and key (``key_file`` may be left out when the PEM holds both). ``server_hostname`` is the
    name checked against the repository's certificate and sent as SNI (default: ``host``).
    """

    host: str
    port: int
    transport: Literal["tls", "udp"] = "tls"
    ca_file: Path | str | None = None
    cert_file: Path | str | None = None
    key_file: Path | str | None = None
    server_hostname: str | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError("syslog target host is required")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536:
            raise ValueError(f"syslog target port {self.port!r} is not 1..65535")
        if self.transport not in ("tls", "udp"):
            raise ValueError(f"syslog transport {self.transport!r} is not 'tls' or 'udp'")
        if not isinstance(self.timeout, int | float) or self.timeout <= 0:
            raise ValueError(f"syslog timeout {self.timeout!r} must be a positive number of seconds")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("syslog key_file given without cert_file")
        if self.transport == "udp" and any(
            v is not None for v in (self.ca_file, self.cert_file, self.key_file, self.server_hostname)
        ):
            raise ValueError("ca_file, cert_file, key_file and server_hostname apply to the 'tls' transport only")


class SyslogSender(Protocol):
    """One open channel to the repository; ``send`` takes a complete RFC 5424 message."""

    def send(self, syslog_message: bytes) -> None: ...

    def close(self) -> None: ...


def tls_context(target: SyslogTarget) -> ssl.SSLContext:
    """Client context: certificate and host name verified, TLS ≥ 1.2, ITI-19 suites for 1.2."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(target.ca_file) if target.ca_file is not None else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    if target.cert_file is not None:
        context.load_cert_chain(str(target.cert_file), str(target.key_file) if target.key_file is not None else None)
    return context


class TlsSyslogSender:
    """RFC 5425: octet-counted frames over one verified TLS connection (opened on first send).

    Before each frame the connection is checked for anything the repository sent (a syslog
    receiver sends no data, so readable means an alert or a close): a connection found dead is
    reopened instead of swallowing the next message. After a TLS 1.3 handshake the client can
    finish before the server has checked our certificate; the server then answers with its
    session tickets, or with an alert when it refuses us. We wait for one or the other (up to
    ``TLS13_CONFIRM_SECONDS``) so a refused client fails here instead of "sending" into a
    connection the server is closing.
    """

    def __init__(self, target: SyslogTarget, context: ssl.SSLContext | None = None) -> None:
        if target.transport != "tls":
            raise ValueError("TlsSyslogSender needs a 'tls' target")
        self.target = target
        self._context = context or tls_context(target)
        self._sock: ssl.SSLSocket | None = None

    def send(self, syslog_message: bytes) -> None:
        frame = octet_counted(syslog_message)
        if self._sock is not None and not self._still_open(self._sock):
            self.close()
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.sendall(frame)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError, ValueError):  # ValueError: the TLS layer is already gone
            sock.settimeout(min(self.target.timeout, 1.0))
            sock.unwrap()
        sock.close()

    def __enter__(self) -> TlsSyslogSender:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.target.host, self.target.port), timeout=self.target.timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._context.wrap_socket(raw, server_hostname=self.target.server_hostname or self.target.host)
        except BaseException:
            raw.close()
            raise
        try:
            if sock.version() == "TLSv1.3":
                self._confirm_tls13(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _confirm_tls13(self, sock: ssl.SSLSocket) -> None:
        deadline = time.monotonic() + min(self.target.timeout, TLS13_CONFIRM_SECONDS)
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._read_peer(sock, remaining):
                return  # nothing more arrived: the server sends no tickets, and no alert came
            session = sock.session
            if session is not None and session.has_ticket:
                return

    def _still_open(self, sock: ssl.SSLSocket) -> bool:
        """Consume whatever the repository sent (late session tickets); False if it closed or refused."""
        try:
            while self._read_peer(sock, 0.0):
                pass
        except OSError:
            return False
        return True

    def _read_peer(self, sock: ssl.SSLSocket, wait: float) -> bool:
        """Process TLS records waiting on ``sock`` (up to ``wait`` s): True if some were read.

        Raises when the repository closed the connection, sent an alert, or sent application
        data (RFC 5425 receivers send none).
        """
        if sock.pending() == 0:
            readable, _, _ = select.select([sock], [], [], wait)
            if not readable:
                return False
        sock.setblocking(False)
        try:
            data = sock.recv(1)
        except ssl.SSLWantReadError:  # handshake records (session tickets) consumed, no data
            return True
        finally:
            sock.settimeout(self.target.timeout)
        if not data:
            raise ConnectionResetError("the syslog repository closed the connection")
        raise ConnectionError("the syslog repository sent data; RFC 5425 receivers send none")


class UdpSyslogSender:
    """RFC 5426: one syslog message per datagram, on a connected socket.

    A message over the datagram limit (RFC 5426 §3.2: 65,507 octets on IPv4, 65,527 on IPv6) is
    refused with ``SyslogMessageTooLarge``: truncating would hand the repository broken XML.
    Messages over 2,048 octets are sent, but RFC 5426 only asks receivers to accept that much,
    so prefer TLS for large audit messages. UDP gives no delivery signal; the only failures seen
    are local (no route, name lookup) or an ICMP refusal reported on the connected socket.
    """

    def __init__(self, target: SyslogTarget) -> None:
        if target.transport != "udp":
            raise ValueError("UdpSyslogSender needs a 'udp' target")
        self.target = target
        self._sock: socket.socket | None = None
        self._limit = MAX_UDP_PAYLOAD[socket.AF_INET]

    def send(self, syslog_message: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect()
        if len(syslog_message) > self._limit:
            raise SyslogMessageTooLarge(
                f"syslog message of {len(syslog_message)} octets exceeds the UDP limit of {self._limit} (RFC 5426 §3.2)"
            )
        sent = self._sock.send(syslog_message)
        if sent != len(syslog_message):
            raise OSError(f"only {sent} of {len(syslog_message)} octets went into the datagram")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> UdpSyslogSender:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        family, kind, proto, _, address = socket.getaddrinfo(
            self.target.host, self.target.port, type=socket.SOCK_DGRAM
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(self.target.timeout)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        self._limit = MAX_UDP_PAYLOAD.get(family, MAX_UDP_PAYLOAD[socket.AF_INET])
        return sock


def open_sender(target: SyslogTarget) -> TlsSyslogSender | UdpSyslogSender:
    """The sender for ``target.transport``; nothing is connected until the first ``send``."""
    return TlsSyslogSender(target) if target.transport == "tls" else UdpSyslogSender(target)


def send_messages(target: SyslogTarget, syslog_messages: Iterable[bytes]) -> int:
    """Send complete RFC 5424 messages over one channel; the count sent (raises on the first failure)."""
    count = 0
    with contextlib.closing(open_sender(target)) as sender:
        for message in syslog_messages:
            sender.send(message)
            count += 1
    return count


class AuditForwarder:
    """Store and forward of ITI-20 messages through a spool directory (ITI-20 §3.20.7.1).

    ``enqueue`` writes each AuditMessage to its own file, durably (temporary name, fsync,
    rename, fsync of the directory), named ``<time_ns>-<pid>-<seq>.xml`` so names sort in
    enqueue order and are unique across processes sharing the directory. ``deliver_pending``
    sends the files in that order, each deleted only after it was sent; the first failure
    stops the pass, keeps the rest, and schedules the next attempt with exponential back-off
    (``backoff_initial`` doubling up to ``backoff_max`` seconds on ``clock``); ``due()`` tells
    whether that time has come. The syslog TIMESTAMP and PROCID of a message are its enqueue
    time and process (from the file name), not the time of delivery. A message the transport
    can never carry (over the UDP limit) or a spool file that is not a valid AuditMessage is
    moved to ``rejected/`` (kept for an operator, reported in ``last_error``) so it does not
    block the queue. An ``fcntl.flock`` on a lock file lets one process (or thread) deliver at
    a time; the others return 0 at once. Temporary files left by a crash while enqueueing are
    not complete messages and are never sent.
    """

    def __init__(
        self,
        target: SyslogTarget,
        spool_dir: Path,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        hostname: str | None = None,
        app_name: str = "telefhir",
        sender_factory: Callable[[SyslogTarget], SyslogSender] = open_sender,
    ) -> None:
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("back-off needs 0 < backoff_initial <= backoff_max")
        self.target = target
        self.spool_dir = Path(spool_dir)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.clock = clock
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self.app_name = app_name
        _check_header_field("hostname", self.hostname)
        _check_header_field("app_name", self.app_name)
        self._sender_factory = sender_factory
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.last_error: str | None = None
        self.failures = 0
        self.next_attempt_at: float | None = None
        self._sequence = itertools.count()
        self._name_lock = threading.Lock()
        self._last_ns = 0

    # -- enqueue -------------------------------------------------------------------------------

    def enqueue(self, xml_or_event: bytes | dict[str, Any]) -> Path:
        """Spool one AuditMessage (bytes) or AuditEvent (dict, converted by ``audit_message_xml``)."""
        if isinstance(xml_or_event, dict):
            xml = audit_message_xml(xml_or_event)
        elif isinstance(xml_or_event, bytes | bytearray):
            xml = bytes(xml_or_event)
            _check_audit_message(xml)
        else:
            raise ValueError("enqueue takes AuditMessage XML bytes or an AuditEvent dict")
        name = self._next_name()
        temporary = self.spool_dir / f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(xml)
                handle.flush()
                os.fsync(handle.fileno())
            final = self.spool_dir / name
            os.rename(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._fsync_directory()
        return final

    def _next_name(self) -> str:
        with self._name_lock:
            now = max(time.time_ns(), self._last_ns + 1)  # never backwards within this process
            self._last_ns = now
            sequence = next(self._sequence)
        return f"{now:020d}-{os.getpid():010d}-{sequence:012d}.xml"

    def _fsync_directory(self) -> None:
        fd = os.open(self.spool_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- state ---------------------------------------------------------------------------------

    def pending(self) -> int:
        """How many messages wait in the spool."""
        return len(self._spooled())

    def rejected(self) -> int:
        """How many messages were set aside in ``rejected/``."""
        directory = self.spool_dir / REJECTED_DIR
        return len([p for p in directory.iterdir() if _SPOOL_NAME.match(p.name)]) if directory.is_dir() else 0

    def due(self) -> bool:
        """Whether a delivery attempt is due (no back-off pending, or its time has come)."""
        return self.next_attempt_at is None or self.clock() >= self.next_attempt_at

    def deliver_if_due(self) -> int:
        """``deliver_pending()`` when ``due()``, else 0: what a periodic task calls."""
        return self.deliver_pending() if self.due() else 0

    def _spooled(self) -> list[Path]:
        return sorted(p for p in self.spool_dir.iterdir() if _SPOOL_NAME.match(p.name))

    # -- delivery ------------------------------------------------------------------------------

    def deliver_pending(self) -> int:
        """Send every spooled message in order; the number sent (0 if another deliverer holds the lock)."""
        lock_fd = os.open(self.spool_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            return self._deliver_locked()
        finally:
            os.close(lock_fd)  # closing the descriptor releases the flock

    def _deliver_locked(self) -> int:
        sent = 0
        rejection: str | None = None
        sender: SyslogSender | None = None
        try:
            for path in self._spooled():
                try:
                    message = self._syslog_message(path)
                except FileNotFoundError:  # delivered by an earlier holder of the lock meanwhile
                    continue
                except ValueError as exc:
                    rejection = f"{path.name}: {exc}"
                    self._reject(path)
                    continue
                except OSError as exc:  # unreadable spool file: retry later, keep the order
                    self._failed(exc)
                    return sent
                if sender is None:
                    sender = self._sender_factory(self.target)
                try:
                    sender.send(message)
                except SyslogMessageTooLarge as exc:
                    rejection = f"{path.name}: {exc}"
                    self._reject(path)
                    continue
                except OSError as exc:
                    self._failed(exc)
                    return sent
                path.unlink()
                sent += 1
        finally:
            if sender is not None:
                sender.close()
        self.failures = 0
        self.next_attempt_at = None
        self.last_error = rejection
        return sent

    def _syslog_message(self, path: Path) -> bytes:
        match = _SPOOL_NAME.match(path.name)
        assert match is not None  # _spooled() only lists matching names
        xml = path.read_bytes()
        _check_audit_message(xml)
        return format_rfc5424(
            xml,
            hostname=self.hostname,
            app_name=self.app_name,
            procid=str(int(match.group(2))),
            timestamp=datetime.fromtimestamp(int(match.group(1)) / 1e9, tz=UTC),
        )

    def _reject(self, path: Path) -> None:
        directory = self.spool_dir / REJECTED_DIR
        directory.mkdir(exist_ok=True)
        shutil.move(path, directory / path.name)

    def _failed(self, exc: OSError) -> None:
        self.failures += 1
        delay = min(self.backoff_max, self.backoff_initial * 2 ** (self.failures - 1))
        self.next_attempt_at = self.clock() + delay
        self.last_error = f"{type(exc).__name__}: {exc}"


def _check_audit_message(xml: bytes) -> None:
    """Well-formed UTF-8 XML whose root is ``AuditMessage`` (no DOCTYPE, no entities, no network)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from exc
    info = root.getroottree().docinfo
    if info.doctype:
        raise ValueError("an AuditMessage must not carry a DOCTYPE")
    if (info.encoding or "UTF-8").upper() != "UTF-8":
        raise ValueError(f"AuditMessage is encoded as {info.encoding}; ITI-20 requires UTF-8")
    if root.tag != "AuditMessage":
        raise ValueError(f"root element is {root.tag!r}, not 'AuditMessage' (DICOM PS3.15 A.5.1)")
