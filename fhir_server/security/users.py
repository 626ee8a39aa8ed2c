"""User accounts (``auth_users``): passwords, a TOTP second factor, lockout, password policy and
expiry, and network binding (MISSION.md R22: "password + one-time code, or certificate; 5
failures lock the account for 1 hour; device/IP binding for remote access").

**Passwords** are hashed with argon2id (RFC 9106; ``argon2-cffi``'s defaults, its second
recommended parameter set) and never stored or logged in clear. Before hashing, and before the
policy is checked, a password is normalised to Unicode NFKC (NIST SP 800-63B §5.1.1.2): a
password typed with a Chinese input method in full-width mode (``Ｐａｓｓ１２３``) is then the same
password as the one typed in half-width mode. A successful login re-hashes the password when the
stored hash was made with weaker parameters (``check_needs_rehash``), so raising the cost reaches
every active account without a reset.

**Password policy** (``PasswordPolicy``): at least ``min_length`` characters (counted as code
points after NFKC, so one 汉字 is one character), at most ``max_length`` (argon2 work grows with
the input; NIST SP 800-63B §5.1.1.2 asks to allow at least 64); at least ``require_classes`` of
four character classes — lower-case letters, upper-case letters, digits, symbols — where a letter
without case (汉字, kana, hangul: Unicode categories Lo and Lm) counts in the lower-case class, the
"letters" class of a script without case; no control, format, private-use or unassigned
characters (they cannot be typed reliably on another device); not containing the username (nor
the part of it before ``@``) when that is 3 characters or more; and when changing, not the current
password again (which would defeat expiry). Every violation is reported at once (``PolicyError``).

**Usernames** are compared case-insensitively: they are stored NFKC-normalised and lower-cased,
so ``Zhang.San`` and ``zhang.san`` cannot be two accounts that an administrator confuses.

**Second factor**: TOTP (RFC 6238) with 6 digits and a 30 s step, the parameters every
authenticator app supports; the secret is 32 base32 characters (160 bits, RFC 4226 §4 R6). A code
is accepted for the current step and one step either side (clock drift, RFC 6238 §5.2), and each
code at most once: a code is refused unless its step is later than the step of the last code the
account used (RFC 6238 §5.2, "the verifier MUST NOT accept the second attempt of the OTP after
the successful validation has been issued for the first OTP"). That last step is stored with the
account (``totp_last_step``) and claimed by one conditional ``UPDATE … WHERE totp_last_step IS
NULL OR totp_last_step < :step``, so no two workers can accept the same code. Enrolment
replaces any previous secret and is active at once (the provisioning URI is handed to the user
by whoever enrolled them).

**Rules of** ``login``, in the order they are applied:

1. *Unknown username* (or one that cannot be a username) → ``BAD_CREDENTIALS`` after the same
   argon2 work as a known one (a hash made at first use with the store's hasher), so neither the
   answer nor its timing tells a stranger which accounts exist. Nothing is counted: there is no
   row to count in.
2. *Network binding*: if the account lists networks and the address is in none of them (or no
   address is known) → ``NETWORK_REFUSED``, before the password is looked at and **not counted as
   a failure**. Why before: from outside its networks an account cannot be used even with its
   password, so answering there must not tell whether a guessed password was right (no password
   oracle from the internet). Why not counted: otherwise anyone on the internet could keep an
   insider's account locked (a lockout denial of service), and binding exists precisely to keep
   remote parties away from such accounts. The price: it tells the caller that a bound account
   of that name exists.
3. *Locked* (``locked_until`` in the future) → ``LOCKED`` with ``locked_until``, without checking
   the password (no guesses while locked) and without extending the lock (a lock that every
   attempt extends would let an attacker keep the owner out indefinitely with one request per
   hour). Once a lock has expired the failure count starts again from 0.
4. *Wrong password* → ``BAD_CREDENTIALS`` and ``failed_logins + 1``, computed in one SQL
   ``UPDATE`` (safe with concurrent workers: the database serialises updates of one row, and the
   update only applies while the account is not locked). The ``max_failures``-th consecutive
   failure sets ``locked_until = now + lock_seconds`` in that same statement and answers
   ``LOCKED``. Concurrent failing attempts therefore count exactly up to the lock: those that
   arrive after it answer ``LOCKED`` and count nothing.
5. *Disabled* → ``DISABLED``, only once the password has been shown to be right, so a stranger
   cannot learn that a disabled account exists; not counted (the owner knows the password).
6. *TOTP*, for an enrolled account: no code → ``TOTP_REQUIRED``, not counted (a two-step login
   form asks for the code after the password); a wrong, malformed or already used code →
   ``TOTP_INVALID`` and counted as a failure exactly as in rule 4 (so the code cannot be guessed
   either: 5 tries of 10^6), the ``max_failures``-th answering ``LOCKED``.
7. *Expired password* (``max_age_days`` after it was set; 0 = never) → ``PASSWORD_EXPIRED``: both
   factors were right, so the failure count is reset, but there is no session and
   ``last_login`` is not set; the caller must make the user choose a new password, with
   ``change_password`` (which applies these same rules, needs a fresh one-time code, and ends in
   ``OK``).
8. Otherwise → ``OK``: ``failed_logins = 0``, ``last_login = now``, the hash upgraded if needed.
   Should the account have been locked, or its password changed, between the check and this
   update, the answer is ``LOCKED`` or ``BAD_CREDENTIALS`` instead.

What the caller shows (``LoginResult.message``) never says, for ``BAD_CREDENTIALS``, whether the
username exists; for ``LOCKED`` it says until when (UTC, ISO 8601). All times are integer µs since
the epoch, as everywhere in the server (``fhir_server/util/clock.py``).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
import secrets
import threading
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyotp
import pyotp.utils
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, case, delete, insert, null, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from fhir_server.security import crypto
from fhir_server.security import roles as known_roles
from fhir_server.security.keyring import KeyRing
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import auth_users as U
from fhir_server.util.clock import now_us

log = logging.getLogger(__name__)

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND
#: RFC 6238 parameters every authenticator app supports (and the only ones many do)
TOTP_DIGITS = 6
TOTP_STEP_SECONDS = 30
#: steps accepted either side of the current one (RFC 6238 §5.2; pyotp's ``valid_window=1``)
TOTP_WINDOW = 1
#: a longer login password is wrong by definition; refused before argon2 sees it (work bound)
MAX_PASSWORD_INPUT = 4096
MAX_USERNAME_LENGTH = 128

#: SMART App Launch 2 ``fhirUser``: "a Patient, Practitioner, PractitionerRole, RelatedPerson, or
#: Person"; the id is FHIR R4's ``id`` datatype
_FHIR_USER = re.compile(r"(Patient|Practitioner|PractitionerRole|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}")
_ORGANIZATION = re.compile(r"Organization/[A-Za-z0-9\-.]{1,64}")
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: Unicode general categories no password may contain: controls, format characters, surrogates,
#: private use, unassigned, line and paragraph separators
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
CHARACTER_CLASSES = ("lower-case or caseless letter", "upper-case letter", "digit", "symbol")


class PolicyError(ValueError):
    """A password the policy refuses; ``reasons`` lists every rule it breaks."""

    def __init__(self, reasons: Iterable[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("password refused: " + "; ".join(self.reasons))


class UserExistsError(ValueError):
    """``create`` with a username that is taken."""


class UnknownUserError(LookupError):
    """An administrative change to an account that does not exist."""


def normalise_password(password: str) -> str:
    """NFKC (NIST SP 800-63B §5.1.1.2), so full-width and half-width input are one password."""
    if not isinstance(password, str):
        raise TypeError("a password is a str")
    return unicodedata.normalize("NFKC", password)


def normalise_username(username: str) -> str:
    """NFKC then lower case; a clear ``ValueError`` for what cannot be a username."""
    if not isinstance(username, str):
        raise TypeError("a username is a str")
    name = unicodedata.normalize("NFKC", username).lower()
    if not name or len(name) > MAX_USERNAME_LENGTH:
        raise ValueError(f"a username is 1-{MAX_USERNAME_LENGTH} characters")
    if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in name):
        raise ValueError("a username has no spaces or control characters")
    return name


def _character_class(char: str) -> int | None:
    """Index in ``CHARACTER_CLASSES``; None for a combining mark (part of its base letter)."""
    category = unicodedata.category(char)
    if category in ("Lu", "Lt"):
        return 1
    if category[0] == "L":  # Ll, and Lo/Lm: letters of scripts without case (汉字, kana, hangul)
        return 0
    if category[0] == "N":
        return 2
    if category[0] == "M":
        return None
    return 3  # punctuation, symbols, spaces


@dataclass(frozen=True)
class PasswordPolicy:
    """What a new password must be (see the module docstring for the reasons)."""

    min_length: int = 10
    require_classes: int = 3  # of CHARACTER_CLASSES
    max_age_days: int = 90  # expiry; 0 = never
    forbid_username: bool = True
    max_length: int = 128

    def __post_init__(self) -> None:
        if self.min_length < 1:
            raise ValueError("min_length must be at least 1")
        if self.max_length < max(self.min_length, 64):
            raise ValueError("max_length must be at least min_length and at least 64 (NIST SP 800-63B §5.1.1.2)")
        if not 0 <= self.require_classes <= len(CHARACTER_CLASSES):
            raise ValueError(f"require_classes must be 0-{len(CHARACTER_CLASSES)}")
        if self.max_age_days < 0:
            raise ValueError("max_age_days must be 0 (never) or more")

    def violations(self, password: str, username: str | None = None) -> list[str]:
        """Every rule ``password`` breaks (empty when it is acceptable)."""
        text = normalise_password(password)
        reasons = []
        if len(text) < self.min_length:
            reasons.append(f"it has {len(text)} characters, at least {self.min_length} are needed")
        if len(text) > self.max_length:
            reasons.append(f"it has {len(text)} characters, at most {self.max_length} are allowed")
        forbidden = sorted({unicodedata.category(c) for c in text} & _FORBIDDEN_CATEGORIES)
        if forbidden:
            reasons.append(f"it contains control or unassigned characters (Unicode {', '.join(forbidden)})")
        classes = {_character_class(c) for c in text} - {None}
        if len(classes) < self.require_classes:
            present = ", ".join(CHARACTER_CLASSES[i] for i in sorted(c for c in classes if c is not None)) or "none"
            reasons.append(
                f"it uses {len(classes)} of the character classes ({', '.join(CHARACTER_CLASSES)}), "
                f"at least {self.require_classes} are needed (present: {present})"
            )
        if self.forbid_username and username:
            folded = text.casefold()
            name = unicodedata.normalize("NFKC", username).casefold()
            parts = {name, name.partition("@")[0]}
            if any(len(part) >= 3 and part in folded for part in parts):
                reasons.append("it contains the username")
        return reasons

    def check(self, password: str, username: str | None = None) -> None:
        """Raise ``PolicyError`` listing every rule broken."""
        reasons = self.violations(password, username)
        if reasons:
            raise PolicyError(reasons)

    def expires(self, password_changed: int) -> int | None:
        """When a password set at ``password_changed`` (µs) expires; None when passwords never do."""
        return password_changed + self.max_age_days * US_PER_DAY if self.max_age_days else None


@dataclass(frozen=True)
class LockoutPolicy:
    """R22: 5 consecutive failures lock the account for 1 hour."""

    max_failures: int = 5
    lock_seconds: int = 3600

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if self.lock_seconds < 1:
            raise ValueError("lock_seconds must be at least 1")


@dataclass(frozen=True)
class User:
    """An account as the rest of the server sees it: never the hash or the TOTP secret.

    ``locked_until`` is None unless the account is locked now, and ``failed_logins`` is the count
    that applies now (0 once a lock has expired), both as of when the row was read.
    """

    username: str
    fhir_user: str | None
    organization: str | None
    roles: tuple[str, ...]
    totp_enrolled: bool
    locked_until: int | None
    password_changed: int
    allowed_networks: tuple[str, ...]
    disabled: bool
    failed_logins: int
    created: int
    last_login: int | None


class LoginOutcome(enum.StrEnum):
    OK = "ok"
    BAD_CREDENTIALS = "bad-credentials"
    LOCKED = "locked"
    TOTP_REQUIRED = "totp-required"
    TOTP_INVALID = "totp-invalid"
    PASSWORD_EXPIRED = "password-expired"
    NETWORK_REFUSED = "network-refused"
    DISABLED = "disabled"


@dataclass(frozen=True)
class LoginResult:
    """What ``login`` decided. ``user`` is None for ``BAD_CREDENTIALS`` (nothing about an account
    leaves on that path); ``message`` is what the client may be shown."""

    outcome: LoginOutcome
    user: User | None
    locked_until: int | None
    message: str

    @property
    def ok(self) -> bool:
        return self.outcome is LoginOutcome.OK


def utc_iso(us: int) -> str:
    """``2026-01-02T03:04:05Z``: how a lock's end is told to the user."""
    return datetime.fromtimestamp(us // US_PER_SECOND, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_BAD_CREDENTIALS = "The username or password is not correct."


def _locked_message(locked_until: int) -> str:
    return f"This account is locked after too many failed sign-in attempts, until {utc_iso(locked_until)} (UTC)."


def _parse_networks(networks: Iterable[str]) -> tuple[str, ...]:
    """CIDRs (or single addresses), validated and written canonically; host bits set are refused
    (``10.1.2.3/16`` is almost always a typing mistake for a network)."""
    if isinstance(networks, str):
        raise TypeError("networks is a sequence of CIDR strings, not one string")
    parsed = []
    for text in networks:
        try:
            parsed.append(str(ipaddress.ip_network(text.strip(), strict=True)))
        except ValueError as exc:
            raise ValueError(f"not a network (CIDR such as 10.20.0.0/16 or 2001:db8::/32): {text!r}: {exc}") from exc
    return tuple(dict.fromkeys(parsed))


def totp_aad(username: str) -> str:
    """Where an encrypted TOTP secret belongs (its AES-GCM associated data, security/crypto.py)."""
    return f"auth_users/{username}#totp_secret"


def _parse_roles(roles: Iterable[str]) -> tuple[str, ...]:
    if isinstance(roles, str):
        raise TypeError("roles is a sequence of role codes, not one string")
    roles = tuple(roles)
    for role in roles:
        if not _ROLE.fullmatch(role):
            raise ValueError(f"not a role code (letters, digits, '.', '_', ':', '-'; at most 64): {role!r}")
        if not known_roles.known(role):
            raise ValueError(f"unknown role {role!r}: one of {', '.join(known_roles.ROLES)}")
    return tuple(dict.fromkeys(known_roles.ALIASES.get(r, r) for r in roles))


def _check_fhir_user(fhir_user: str | None) -> str | None:
    if fhir_user is not None and not _FHIR_USER.fullmatch(fhir_user):
        raise ValueError(
            f"fhirUser must be Patient/, Practitioner/, PractitionerRole/, RelatedPerson/ or Person/ "
            f"and an id: {fhir_user!r}"
        )
    return fhir_user


def _check_organization(organization: str | None) -> str | None:
    if organization is not None and not _ORGANIZATION.fullmatch(organization):
        raise ValueError(f"organization must be Organization/<id>: {organization!r}")
    return organization


def _address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client address; an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, what a dual-stack
    socket reports) is its IPv4 address, so IPv4 networks match it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise ValueError(f"not an IP address: {address!r}") from exc
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class UserStore:
    """Accounts in ``auth_users``."""

    def __init__(
        self,
        engine: Engine,
        *,
        password_policy: PasswordPolicy = PasswordPolicy(),  # noqa: B008 - frozen, so sharing is safe
        lockout: LockoutPolicy = LockoutPolicy(),  # noqa: B008 - frozen, so sharing is safe
        clock: Callable[[], int] = now_us,
        hasher: PasswordHasher | None = None,
        totp_issuer: str = "telefhir",
        ring: KeyRing | None = None,
    ) -> None:
        self.engine = engine
        #: encrypts TOTP secrets at rest (security/crypto.py); None: stored in base32
        self.ring = ring
        self.password_policy = password_policy
        self.lockout = lockout
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        self.totp_issuer = totp_issuer
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------------
    def _row(self, username: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(U).where(U.c.username == username)).first()

    def _user(self, row: Any, now: int) -> User:
        locked = row.locked_until_us is not None and row.locked_until_us > now
        lock_expired = row.locked_until_us is not None and not locked
        return User(
            username=row.username,
            fhir_user=row.fhir_user,
            organization=row.organization,
            roles=tuple(row.roles.split()),
            totp_enrolled=row.totp_secret is not None,
            locked_until=row.locked_until_us if locked else None,
            password_changed=row.password_changed_us,
            allowed_networks=tuple(row.allowed_networks.split()),
            disabled=bool(row.disabled),
            failed_logins=0 if lock_expired else row.failed_logins,
            created=row.created_us,
            last_login=row.last_login_us,
        )

    def get(self, username: str) -> User | None:
        try:
            name = normalise_username(username)
        except ValueError:
            return None
        row = self._row(name)
        return self._user(row, self.clock()) if row is not None else None

    def list(self) -> list[User]:
        now = self.clock()
        with self.engine.connect() as conn:
            return [self._user(r, now) for r in conn.execute(select(U).order_by(U.c.username))]

    def password_expires(self, user: User) -> int | None:
        """When ``user``'s password expires (µs), for a login page to warn ahead; None: never."""
        return self.password_policy.expires(user.password_changed)

    # -- administration ------------------------------------------------------------------------
    def create(
        self,
        username: str,
        password: str,
        *,
        fhir_user: str | None = None,
        organization: str | None = None,
        roles: Iterable[str] = (),
        allowed_networks: Iterable[str] = (),
    ) -> User:
        """A new account; the password must pass the policy (``PolicyError`` says why not)."""
        name = normalise_username(username)
        values = {
            "fhir_user": _check_fhir_user(fhir_user),
            "organization": _check_organization(organization),
            "roles": " ".join(_parse_roles(roles)),
            "allowed_networks": " ".join(_parse_networks(allowed_networks)),
        }
        self.password_policy.check(password, name)
        now = self.clock()
        try:
            with begin_write(self.engine) as conn:
                conn.execute(
                    insert(U).values(
                        username=name,
                        password_hash=self.hasher.hash(normalise_password(password)),
                        password_changed_us=now,
                        totp_secret=None,
                        failed_logins=0,
                        locked_until_us=None,
                        created_us=now,
                        last_login_us=None,
                        disabled=False,
                        **values,
                    )
                )
        except IntegrityError as exc:
            raise UserExistsError(f"user {name!r} exists") from exc
        user = self.get(name)
        assert user is not None
        return user

    def _change(self, username: str, **values: Any) -> None:
        name = normalise_username(username)
        with begin_write(self.engine) as conn:
            if not conn.execute(update(U).where(U.c.username == name).values(**values)).rowcount:
                raise UnknownUserError(f"no user {name!r}")

    def remove(self, username: str) -> bool:
        name = normalise_username(username)
        with begin_write(self.engine) as conn:
            removed = bool(conn.execute(delete(U).where(U.c.username == name)).rowcount)
        return removed

    def set_password(self, username: str, new_password: str) -> None:
        """An administrator's reset: policy checked, not the current password again, and the
        expiry clock restarts. It neither unlocks nor resets the failure count (``unlock`` does)."""
        name = normalise_username(username)
        self.password_policy.check(new_password, name)
        row = self._row(name)
        if row is None:
            raise UnknownUserError(f"no user {name!r}")
        if self._verify(row.password_hash, normalise_password(new_password)):
            raise PolicyError(["it is the current password"])
        self._change(
            name,
            password_hash=self.hasher.hash(normalise_password(new_password)),
            password_changed_us=self.clock(),
        )

    def enrol_totp(self, username: str) -> str:
        """A new TOTP secret (replacing any other); the ``otpauth://`` provisioning URI for the
        user's authenticator app (shown as a QR code or typed in)."""
        name = normalise_username(username)
        secret = pyotp.random_base32()  # 32 characters = 160 bits
        stored = crypto.encrypt(self.ring, secret, totp_aad(name)) if self.ring is not None else secret
        self._change(name, totp_secret=stored, totp_last_step=None)
        return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS).provisioning_uri(
            name=name, issuer_name=self.totp_issuer
        )

    def remove_totp(self, username: str) -> None:
        name = normalise_username(username)
        self._change(name, totp_secret=None, totp_last_step=None)

    def _claim_step(self, username: str, step: int) -> bool:
        """Record ``step`` as used; False if it, or a later step, was used already (RFC 6238 §5.2)."""
        last = U.c.totp_last_step
        with begin_write(self.engine) as conn:
            claimed = conn.execute(
                update(U).where(U.c.username == username, or_(last.is_(None), last < step)).values(totp_last_step=step)
            ).rowcount
        return bool(claimed)

    def unlock(self, username: str) -> None:
        self._change(username, failed_logins=0, locked_until_us=None)

    def disable(self, username: str) -> None:
        self._change(username, disabled=True)

    def enable(self, username: str) -> None:
        self._change(username, disabled=False)

    def set_roles(self, username: str, roles: Iterable[str]) -> None:
        self._change(username, roles=" ".join(_parse_roles(roles)))

    def set_networks(self, username: str, allowed_networks: Iterable[str]) -> None:
        """Bind the account to these networks; an empty sequence allows any address."""
        self._change(username, allowed_networks=" ".join(_parse_networks(allowed_networks)))

    def set_fhir_user(self, username: str, fhir_user: str | None) -> None:
        self._change(username, fhir_user=_check_fhir_user(fhir_user))

    def set_organization(self, username: str, organization: str | None) -> None:
        self._change(username, organization=_check_organization(organization))

    # -- login ---------------------------------------------------------------------------------
    def login(
        self, username: str, password: str, *, totp: str | None = None, address: str | None = None
    ) -> LoginResult:
        """Check a sign-in attempt by the rules of the module docstring."""
        return self._login(username, password, totp, address, new_password=None)

    def change_password(
        self,
        username: str,
        current_password: str,
        new_password: str,
        *,
        totp: str | None = None,
        address: str | None = None,
    ) -> LoginResult:
        """The user's own change (also the way out of ``PASSWORD_EXPIRED``): every rule of
        ``login`` applies to the current password and code (an expired password is accepted
        here), then the new password is set and the result is ``OK``.

        The new password's policy is checked first (``PolicyError``, nothing counted, no code
        used up); "not the current password again" can only be checked once the current one is
        verified, so that ``PolicyError`` comes after the one-time code has been used.
        """
        try:
            name = normalise_username(username)
        except ValueError:
            name = username
        self.password_policy.check(new_password, name)
        return self._login(username, current_password, totp, address, new_password=new_password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return bool(self.hasher.verify(password_hash, password))
        except VerificationError:
            return False
        except InvalidHashError:
            log.warning("auth_users holds a password hash argon2 cannot read; that account cannot sign in")
            return False

    def _spend_argon2_work(self, password: str) -> None:
        """The verification a known account would cost, for an unknown one (rule 1)."""
        with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        self._verify(self._dummy_hash, password[:MAX_PASSWORD_INPUT])

    def _totp_secret(self, row: Any) -> str:
        """The account's TOTP secret in clear (encrypted at rest; older rows hold base32)."""
        stored = str(row.totp_secret)
        if crypto.is_token(stored):
            if self.ring is None:
                raise RuntimeError("TOTP secrets are encrypted: this store needs the field key ring")
            return crypto.decrypt(self.ring, stored, totp_aad(row.username))
        return stored

    def _totp_step(self, secret: str, code: str, now: int) -> int | None:
        """The step whose code ``code`` is, within ±``TOTP_WINDOW`` of now; None if none.

        The same as pyotp's ``verify(valid_window=1)``, but saying which step matched, which the
        replay refusal needs. All candidate steps are compared (constant time per comparison).
        """
        code = unicodedata.normalize("NFKC", code).replace(" ", "")
        if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
            return None
        otp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS)
        current = now // US_PER_SECOND // TOTP_STEP_SECONDS
        matched = None
        for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
            if pyotp.utils.strings_equal(otp.generate_otp(step), code):
                matched = step
        return matched

    def _not_locked(self, now: int) -> Any:
        return or_(U.c.locked_until_us.is_(None), U.c.locked_until_us <= now)

    def _count_failure(self, row: Any, now: int, outcome: LoginOutcome, message: str) -> LoginResult:
        """Rule 4: one atomic UPDATE counts the failure and, at ``max_failures``, locks."""
        lock_expired = and_(U.c.locked_until_us.is_not(None), U.c.locked_until_us <= now)
        count = case((lock_expired, 1), else_=U.c.failed_logins + 1)
        locked_until = now + self.lockout.lock_seconds * US_PER_SECOND
        statement = (
            update(U)
            .where(U.c.username == row.username, self._not_locked(now))
            .values(
                failed_logins=count,
                locked_until_us=case((count >= self.lockout.max_failures, locked_until), else_=null()),
            )
            .returning(U.c.locked_until_us)
        )
        with begin_write(self.engine) as conn:
            counted = conn.execute(statement).first()
        current = self._row(row.username)
        user = self._user(current, now) if current is not None else None
        if counted is None or counted.locked_until_us is not None:
            # locked by this failure, or by a concurrent one before this could count
            if user is not None and user.locked_until is not None:
                return LoginResult(LoginOutcome.LOCKED, user, user.locked_until, _locked_message(user.locked_until))
            return LoginResult(LoginOutcome.BAD_CREDENTIALS, None, None, _BAD_CREDENTIALS)
        return LoginResult(outcome, user if outcome is not LoginOutcome.BAD_CREDENTIALS else None, None, message)

    def _succeed(
        self, row: Any, now: int, values: dict[str, Any], result: Callable[[User], LoginResult]
    ) -> LoginResult:
        """Rules 7-8: reset the failures (and whatever else ``values`` says) unless, meanwhile,
        the account was locked or its password changed."""
        statement = (
            update(U)
            .where(U.c.username == row.username, self._not_locked(now), U.c.password_hash == row.password_hash)
            .values(failed_logins=0, locked_until_us=None, **values)
        )
        with begin_write(self.engine) as conn:
            applied = conn.execute(statement).rowcount
        current = self._row(row.username)
        user = self._user(current, now) if current is not None else None
        if applied:
            assert user is not None
            return result(user)
        if user is not None and user.locked_until is not None:
            return LoginResult(LoginOutcome.LOCKED, user, user.locked_until, _locked_message(user.locked_until))
        return LoginResult(LoginOutcome.BAD_CREDENTIALS, None, None, _BAD_CREDENTIALS)

    def _login(
        self, username: str, password: str, totp: str | None, address: str | None, *, new_password: str | None
    ) -> LoginResult:
        now = self.clock()
        client_ip = _address(address) if address is not None else None
        secret_input = normalise_password(password)
        try:
            name = normalise_username(username)
        except ValueError:
            name = None
        row = self._row(name) if name is not None else None
        # 1. unknown: the same argon2 work, the same answer as a wrong password
        if row is None:
            self._spend_argon2_work(secret_input)
            return LoginResult(LoginOutcome.BAD_CREDENTIALS, None, None, _BAD_CREDENTIALS)
        user = self._user(row, now)
        # 2. network binding, before the password and not counted
        if user.allowed_networks and (
            client_ip is None or not any(client_ip in ipaddress.ip_network(n) for n in user.allowed_networks)
        ):
            where = f"from {client_ip}" if client_ip is not None else "without a known client address"
            return LoginResult(
                LoginOutcome.NETWORK_REFUSED,
                user,
                None,
                f"Signing in to this account is not allowed {where}; it is bound to its institution's networks.",
            )
        # 3. locked: no password check, no extension
        if user.locked_until is not None:
            return LoginResult(LoginOutcome.LOCKED, user, user.locked_until, _locked_message(user.locked_until))
        # 4. password
        if len(secret_input) > MAX_PASSWORD_INPUT or not self._verify(row.password_hash, secret_input):
            if len(secret_input) > MAX_PASSWORD_INPUT:
                self._spend_argon2_work(secret_input)
            return self._count_failure(row, now, LoginOutcome.BAD_CREDENTIALS, _BAD_CREDENTIALS)
        # 5. disabled, only told to someone who knows the password
        if user.disabled:
            return LoginResult(
                LoginOutcome.DISABLED,
                user,
                None,
                "This account is disabled; ask your institution's administrator.",
            )
        # 6. second factor
        if row.totp_secret is not None:
            if not totp:
                return LoginResult(
                    LoginOutcome.TOTP_REQUIRED, user, None, "Enter the one-time code from your authenticator app."
                )
            step = self._totp_step(self._totp_secret(row), totp, now)
            if step is None or not self._claim_step(row.username, step):
                return self._count_failure(
                    row,
                    now,
                    LoginOutcome.TOTP_INVALID,
                    "The one-time code is not correct or has been used already; wait for the next one.",
                )
        # the user's own password change (change_password)
        if new_password is not None:
            new_input = normalise_password(new_password)
            if self._verify(row.password_hash, new_input):
                raise PolicyError(["it is the current password"])
            changed = {
                "password_hash": self.hasher.hash(new_input),
                "password_changed_us": now,
                "last_login_us": now,
            }
            return self._succeed(
                row, now, changed, lambda u: LoginResult(LoginOutcome.OK, u, None, "Password changed; signed in.")
            )
        # 7. expiry
        expires = self.password_policy.expires(row.password_changed_us)
        if expires is not None and now >= expires:
            message = f"The password expired at {utc_iso(expires)} (UTC); choose a new one to sign in."
            return self._succeed(row, now, {}, lambda u: LoginResult(LoginOutcome.PASSWORD_EXPIRED, u, None, message))
        # 8. success
        values: dict[str, Any] = {"last_login_us": now}
        if self.hasher.check_needs_rehash(row.password_hash):
            values["password_hash"] = self.hasher.hash(secret_input)
        return self._succeed(row, now, values, lambda u: LoginResult(LoginOutcome.OK, u, None, "Signed in."))
