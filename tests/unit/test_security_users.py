"""User accounts (fhir_server.security.users): every rule of ``login`` in the module docstring,
with a fake clock, real argon2, real TOTP codes from pyotp, and concurrent failing logins; on
SQLite and PostgreSQL (``database_url``).

The databases are shared by the test session, so each test makes accounts with names of its own.
"""

from __future__ import annotations

import threading
import urllib.parse
import uuid
from collections.abc import Iterator

import pyotp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update

from fhir_server.security.users import (
    LockoutPolicy,
    LoginOutcome,
    PasswordPolicy,
    PolicyError,
    UnknownUserError,
    UserExistsError,
    UserStore,
    utc_iso,
)
from fhir_server.storage.engine import make_engine
from fhir_server.storage.migrate import ensure_schema
from fhir_server.storage.schema import auth_users

SECOND = 1_000_000
DAY = 86_400 * SECOND
#: 10 s into a TOTP step, so ±1 step is unambiguous
T0 = (1_800_000_000 // 30 * 30 + 10) * SECOND
PASSWORD = "Correct-Horse-42"
OTHER_PASSWORD = "Battery-Staple-77"


class FakeClock:
    def __init__(self, start: int = T0) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * SECOND)


class CountingHasher(PasswordHasher):
    """Cheap argon2id parameters (fast tests) that counts verifications."""

    def __init__(self, memory_cost: int = 1024) -> None:
        super().__init__(time_cost=1, memory_cost=memory_cost, parallelism=1)
        self.verifications = 0
        self._lock = threading.Lock()

    def verify(self, hash, password):  # type: ignore[no-untyped-def]
        with self._lock:
            self.verifications += 1
        return super().verify(hash, password)


@pytest.fixture()
def engine(database_url: str) -> Iterator:
    engine = make_engine(database_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture()
def store(engine, clock, hasher) -> UserStore:
    return UserStore(engine, clock=clock, hasher=hasher)


@pytest.fixture()
def name() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def _row(engine, username: str):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(auth_users).where(auth_users.c.username == username)).one()


def _secret(uri: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]


def _code(secret: str, at_us: int) -> str:
    return pyotp.TOTP(secret).at(at_us // SECOND)


# -- accounts ------------------------------------------------------------------------------------
def test_create_get_list_and_administer(store, engine, name):
    user = store.create(
        name.upper(),
        PASSWORD,
        fhir_user="Practitioner/12",
        organization="Organization/5",
        roles=("expert", "operator", "expert"),
        allowed_networks=("10.20.0.0/16", "2001:db8::/32"),
    )
    assert user.username == name  # stored lower-cased: one account whatever the case
    assert user.roles == ("expert", "operator")
    assert user.allowed_networks == ("10.20.0.0/16", "2001:db8::/32")
    assert (user.fhir_user, user.organization, user.totp_enrolled, user.disabled) == (
        "Practitioner/12",
        "Organization/5",
        False,
        False,
    )
    assert user.password_changed == user.created == T0 and user.last_login is None
    row = _row(engine, name)
    assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash
    assert store.get(name.upper()) == user
    assert store.get("nobody-" + name) is None
    with pytest.raises(UserExistsError):
        store.create(name, OTHER_PASSWORD)

    second = store.create(name + "b", PASSWORD)
    listed = [u.username for u in store.list()]
    assert listed.index(name) < listed.index(second.username)

    store.set_roles(name, ["supervisor"])
    store.set_networks(name, [])
    store.set_fhir_user(name, "PractitionerRole/7")
    store.set_organization(name, None)
    changed = store.get(name)
    assert changed is not None
    assert (changed.roles, changed.allowed_networks, changed.fhir_user, changed.organization) == (
        ("supervisor",),
        (),
        "PractitionerRole/7",
        None,
    )
    assert store.remove(second.username) is True
    assert store.remove(second.username) is False
    with pytest.raises(UnknownUserError):
        store.unlock(second.username)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("fhir_user", "Device/1", "fhirUser"),
        ("organization", "Patient/5", "Organization/"),
        ("roles", ("expert", "bad role"), "role code"),
        ("roles", ("expert", "wizard"), "unknown role"),
        ("allowed_networks", ("10.1.2.3/16",), "not a network"),
        ("allowed_networks", ("example.org",), "not a network"),
    ],
)
def test_create_refuses_bad_account_data(store, name, field, value, needle):
    with pytest.raises(ValueError, match=needle):
        store.create(name, PASSWORD, **{field: value})
    assert store.get(name) is None


def test_bad_usernames_are_refused(store):
    for bad in ("", "zhang san", "x" * 129, "tab\there"):
        with pytest.raises(ValueError, match="username"):
            store.create(bad, PASSWORD)


# -- password policy -----------------------------------------------------------------------------
def test_policy_reports_every_reason():
    policy = PasswordPolicy()
    with pytest.raises(PolicyError) as err:
        policy.check("zhangsan", username="zhangsan")
    reasons = err.value.reasons
    assert len(reasons) == 3
    assert "8 characters, at least 10" in reasons[0]
    assert "1 of the character classes" in reasons[1] and "at least 3" in reasons[1]
    assert reasons[2] == "it contains the username"
    assert policy.violations("Tr0ub4dor&3x") == []


def test_policy_character_classes_and_cjk():
    policy = PasswordPolicy()
    assert policy.violations("张三丰张三丰1234!") == []  # caseless letters, digits, symbol
    (reason,) = policy.violations("张三丰张三丰张三丰12")  # letters and digits only
    assert "2 of the character classes" in reason and "lower-case or caseless letter, digit" in reason
    # full-width input (Chinese IME) is NFKC-normalised: Ｐ is P, ０ is 0
    assert policy.violations("Ｐａｓｓｗ０ｒｄ１２３") == []
    assert policy.violations("abcdefghij", username=None) != []
    assert PasswordPolicy(require_classes=1).violations("abcdefghij") == []


def test_policy_username_length_controls_and_limits():
    policy = PasswordPolicy()
    assert "it contains the username" in policy.violations("xxZhang.San@@99", username="zhang.san@hosp.cn")
    assert policy.violations("Li-Wei-2024!", username="li") == []  # a 2-letter name is not searched for
    assert any("control" in r for r in policy.violations("Abcdefgh1\x00", username=None))
    assert any("at most 128" in r for r in policy.violations("Aa1!" * 40))
    assert PasswordPolicy(forbid_username=False).violations("zhangsan-Z9!", username="zhangsan") == []
    for bad in ({"min_length": 0}, {"require_classes": 5}, {"max_age_days": -1}, {"max_length": 32}):
        with pytest.raises(ValueError):
            PasswordPolicy(**bad)
    with pytest.raises(ValueError):
        LockoutPolicy(max_failures=0)


def test_create_and_set_password_apply_the_policy(store, engine, clock, name):
    with pytest.raises(PolicyError, match="at least 10"):
        store.create(name, "Sh0rt!")
    assert store.get(name) is None
    store.create(name, PASSWORD)
    with pytest.raises(PolicyError, match="contains the username"):
        store.set_password(name, f"{name}-X9!")
    with pytest.raises(PolicyError, match="current password"):
        store.set_password(name, PASSWORD)
    clock.advance(60)
    store.set_password(name, OTHER_PASSWORD)
    assert store.get(name).password_changed == T0 + 60 * SECOND
    assert store.login(name, PASSWORD).outcome is LoginOutcome.BAD_CREDENTIALS
    assert store.login(name, OTHER_PASSWORD).outcome is LoginOutcome.OK
    with pytest.raises(UnknownUserError):
        store.set_password("nobody-" + name, OTHER_PASSWORD)


# -- login: success, unknown users, bad passwords, lockout ---------------------------------------
def test_successful_login_resets_failures_and_records_time(store, engine, clock, name):
    store.create(name, PASSWORD)
    assert store.login(name, "wrong-password").outcome is LoginOutcome.BAD_CREDENTIALS
    assert _row(engine, name).failed_logins == 1
    clock.advance(5)
    result = store.login(name.upper(), "Correct-Horse-42")
    assert result.ok and result.message == "Signed in."
    assert result.user is not None and result.user.last_login == T0 + 5 * SECOND
    row = _row(engine, name)
    assert (row.failed_logins, row.last_login_us, row.locked_until_us) == (0, T0 + 5 * SECOND, None)


def test_full_width_password_input_signs_in(store, name):
    store.create(name, "Passw0rd123!")
    assert store.login(name, "Ｐａｓｓｗ０ｒｄ１２３！").outcome is LoginOutcome.OK


def test_unknown_user_looks_like_a_wrong_password_and_costs_the_same(store, hasher, name):
    store.create(name, PASSWORD)
    before = hasher.verifications
    unknown = store.login("nobody-" + name, PASSWORD)
    assert hasher.verifications == before + 1  # the same argon2 work as a known account
    wrong = store.login(name, "Wrong-Horse-42")
    assert hasher.verifications == before + 2
    assert unknown.outcome is wrong.outcome is LoginOutcome.BAD_CREDENTIALS
    assert unknown.message == wrong.message
    assert unknown.user is None and wrong.user is None and unknown.locked_until is None
    assert "username or password" in unknown.message
    # a name that could never be a username answers the same, it does not raise
    assert store.login("has space", PASSWORD).message == wrong.message
    # an absurdly long password is refused before argon2 sees it whole, and counted
    assert store.login(name, "A" * 100_000).outcome is LoginOutcome.BAD_CREDENTIALS
    assert store.get(name).failed_logins == 2


def test_five_failures_lock_for_an_hour_without_extension(store, engine, clock, hasher, name):
    store.create(name, PASSWORD)
    for attempt in range(1, 5):
        result = store.login(name, f"wrong-{attempt}")
        assert result.outcome is LoginOutcome.BAD_CREDENTIALS
        assert _row(engine, name).failed_logins == attempt
        clock.advance(1)
    fifth = store.login(name, "wrong-5")
    lock_end = T0 + 4 * SECOND + 3600 * SECOND
    assert fifth.outcome is LoginOutcome.LOCKED and fifth.locked_until == lock_end
    assert utc_iso(lock_end) in fifth.message and "(UTC)" in fifth.message
    assert utc_iso(lock_end).endswith("Z")
    assert _row(engine, name).locked_until_us == lock_end

    # while locked: the right password is not even checked, and the lock is not extended
    clock.advance(1800)
    before = hasher.verifications
    locked = store.login(name, PASSWORD)
    assert locked.outcome is LoginOutcome.LOCKED and locked.locked_until == lock_end
    assert hasher.verifications == before
    row = _row(engine, name)
    assert (row.locked_until_us, row.failed_logins) == (lock_end, 5)
    assert store.get(name).locked_until == lock_end

    # after the lock: counting starts again from 0
    clock.now = lock_end
    assert store.get(name).locked_until is None and store.get(name).failed_logins == 0
    again = store.login(name, "wrong-again")
    assert again.outcome is LoginOutcome.BAD_CREDENTIALS
    row = _row(engine, name)
    assert (row.failed_logins, row.locked_until_us) == (1, None)
    assert store.login(name, PASSWORD).outcome is LoginOutcome.OK
    assert _row(engine, name).failed_logins == 0


def test_configurable_lockout_and_unlock(engine, clock, hasher, name):
    store = UserStore(engine, clock=clock, hasher=hasher, lockout=LockoutPolicy(max_failures=3, lock_seconds=60))
    store.create(name, PASSWORD)
    outcomes = [store.login(name, "nope").outcome for _ in range(3)]
    assert outcomes == [LoginOutcome.BAD_CREDENTIALS, LoginOutcome.BAD_CREDENTIALS, LoginOutcome.LOCKED]
    assert store.get(name).locked_until == T0 + 60 * SECOND
    store.unlock(name)
    row = _row(engine, name)
    assert (row.failed_logins, row.locked_until_us) == (0, None)
    assert store.login(name, PASSWORD).ok


def test_concurrent_failures_lock_exactly_once(store, engine, clock, name):
    store.create(name, PASSWORD)
    barrier = threading.Barrier(10)
    outcomes: list[LoginOutcome] = []
    errors: list[BaseException] = []

    def attempt(i: int) -> None:
        try:
            barrier.wait(timeout=20)
            outcomes.append(store.login(name, f"guess-{i}").outcome)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(outcomes) == 10
    # the first four failures answer BAD_CREDENTIALS, the fifth locks, the rest find it locked
    assert outcomes.count(LoginOutcome.BAD_CREDENTIALS) == 4
    assert outcomes.count(LoginOutcome.LOCKED) == 6
    row = _row(engine, name)
    assert (row.failed_logins, row.locked_until_us) == (5, T0 + 3600 * SECOND)


# -- TOTP ----------------------------------------------------------------------------------------
def test_totp_enrolment_and_codes_at_chosen_times(store, engine, clock, name):
    store.create(name, PASSWORD)
    uri = store.enrol_totp(name)
    assert uri.startswith("otpauth://totp/") and "issuer=telefhir" in uri and name in uri
    secret = _secret(uri)
    assert len(secret) == 32 and _row(engine, name).totp_secret == secret
    assert store.get(name).totp_enrolled

    required = store.login(name, PASSWORD)
    assert required.outcome is LoginOutcome.TOTP_REQUIRED
    assert store.login(name, PASSWORD, totp="").outcome is LoginOutcome.TOTP_REQUIRED
    assert _row(engine, name).failed_logins == 0  # a missing code is not a failure
    # a wrong password is still only BAD_CREDENTIALS: the code is not looked at before it
    assert store.login(name, "wrong", totp=_code(secret, clock.now)).outcome is LoginOutcome.BAD_CREDENTIALS

    # the previous step's code is accepted (drift), and so is the current one afterwards
    assert store.login(name, PASSWORD, totp=_code(secret, clock.now - 30 * SECOND)).ok
    assert _row(engine, name).failed_logins == 0
    current = _code(secret, clock.now)
    assert store.login(name, PASSWORD, totp=f"{current[:3]} {current[3:]}").ok  # spaces tolerated

    clock.advance(60)
    # two steps old: refused and counted
    stale = store.login(name, PASSWORD, totp=_code(secret, clock.now - 60 * SECOND))
    assert stale.outcome is LoginOutcome.TOTP_INVALID and "one-time code" in stale.message
    assert _row(engine, name).failed_logins == 1
    # the next step's code (a phone clock running ahead) is accepted, typed in full width
    ahead = _code(secret, clock.now + 30 * SECOND)
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in ahead)
    assert store.login(name, PASSWORD, totp=full_width).ok
    # malformed codes are wrong codes
    assert store.login(name, PASSWORD, totp="12345").outcome is LoginOutcome.TOTP_INVALID
    assert store.login(name, PASSWORD, totp="abcdef").outcome is LoginOutcome.TOTP_INVALID


def test_totp_replay_is_refused(store, engine, clock, name):
    store.create(name, PASSWORD)
    secret = _secret(store.enrol_totp(name))
    code = _code(secret, clock.now)
    assert store.login(name, PASSWORD, totp=code).ok
    clock.advance(5)  # same step
    replay = store.login(name, PASSWORD, totp=code)
    assert replay.outcome is LoginOutcome.TOTP_INVALID
    assert _row(engine, name).failed_logins == 1
    # an older step's code after a newer one was used is refused too (RFC 6238 §5.2)
    older = _code(secret, clock.now - 30 * SECOND)
    assert older != code
    assert store.login(name, PASSWORD, totp=older).outcome is LoginOutcome.TOTP_INVALID
    clock.advance(30)
    assert store.login(name, PASSWORD, totp=_code(secret, clock.now)).ok
    # re-enrolling starts a new secret and a new replay history
    new_secret = _secret(store.enrol_totp(name))
    assert new_secret != secret
    assert store.login(name, PASSWORD, totp=_code(secret, clock.now)).outcome is LoginOutcome.TOTP_INVALID
    clock.advance(30)
    assert store.login(name, PASSWORD, totp=_code(new_secret, clock.now)).ok


def test_a_code_accepted_by_one_worker_is_refused_by_another(store, engine, clock, hasher, name):
    """Two processes, two stores, one database: the used step is in the table, not in memory."""
    store.create(name, PASSWORD)
    secret = _secret(store.enrol_totp(name))
    other_worker = UserStore(engine, clock=clock, hasher=hasher)
    code = _code(secret, clock.now)
    assert store.login(name, PASSWORD, totp=code).ok
    assert other_worker.login(name, PASSWORD, totp=code).outcome is LoginOutcome.TOTP_INVALID


def test_wrong_codes_lock_the_account(store, engine, clock, name):
    store.create(name, PASSWORD)
    secret = _secret(store.enrol_totp(name))
    wrong = f"{(int(_code(secret, clock.now)) + 1) % 1_000_000:06d}"
    for _ in range(4):
        assert store.login(name, PASSWORD, totp=wrong).outcome is LoginOutcome.TOTP_INVALID
    locked = store.login(name, PASSWORD, totp=wrong)
    assert locked.outcome is LoginOutcome.LOCKED and locked.locked_until == T0 + 3600 * SECOND
    assert store.login(name, PASSWORD, totp=_code(secret, clock.now)).outcome is LoginOutcome.LOCKED


def test_remove_totp(store, name):
    store.create(name, PASSWORD)
    store.enrol_totp(name)
    assert store.login(name, PASSWORD).outcome is LoginOutcome.TOTP_REQUIRED
    store.remove_totp(name)
    assert not store.get(name).totp_enrolled
    assert store.login(name, PASSWORD).ok


# -- expiry and the user's own change ------------------------------------------------------------
def test_password_expires_after_90_days(store, engine, clock, name):
    store.create(name, PASSWORD)
    store.login(name, "wrong")
    assert store.password_expires(store.get(name)) == T0 + 90 * DAY
    clock.now = T0 + 90 * DAY - 1
    assert store.login(name, PASSWORD).ok
    last_login = clock.now
    clock.now = T0 + 90 * DAY
    store.login(name, "wrong")
    expired = store.login(name, PASSWORD)
    assert expired.outcome is LoginOutcome.PASSWORD_EXPIRED
    assert utc_iso(T0 + 90 * DAY) in expired.message
    row = _row(engine, name)
    assert (row.failed_logins, row.last_login_us) == (0, last_login)  # no session: last_login kept
    # the expired password cannot be "renewed" as itself
    with pytest.raises(PolicyError, match="current password"):
        store.change_password(name, PASSWORD, PASSWORD)
    # a wrong current password is a counted failure, not a change
    assert store.change_password(name, "wrong", OTHER_PASSWORD).outcome is LoginOutcome.BAD_CREDENTIALS
    assert _row(engine, name).failed_logins == 1
    clock.advance(10)
    changed = store.change_password(name, PASSWORD, OTHER_PASSWORD)
    assert changed.ok and changed.user.password_changed == clock.now and changed.user.last_login == clock.now
    assert store.login(name, PASSWORD).outcome is LoginOutcome.BAD_CREDENTIALS
    assert store.login(name, OTHER_PASSWORD).ok


def test_change_password_needs_the_second_factor_and_checks_policy_first(store, hasher, clock, name):
    store.create(name, PASSWORD)
    secret = _secret(store.enrol_totp(name))
    before = hasher.verifications
    with pytest.raises(PolicyError, match="at least 10"):
        store.change_password(name, PASSWORD, "short", totp=_code(secret, clock.now))
    assert hasher.verifications == before  # refused before anything was checked or used up
    assert store.change_password(name, PASSWORD, OTHER_PASSWORD).outcome is LoginOutcome.TOTP_REQUIRED
    assert store.change_password(name, PASSWORD, OTHER_PASSWORD, totp=_code(secret, clock.now)).ok
    clock.advance(30)
    assert store.login(name, OTHER_PASSWORD, totp=_code(secret, clock.now)).ok


def test_expiry_zero_means_never(engine, clock, hasher, name):
    store = UserStore(engine, clock=clock, hasher=hasher, password_policy=PasswordPolicy(max_age_days=0))
    store.create(name, PASSWORD)
    clock.now = T0 + 3650 * DAY
    assert store.password_expires(store.get(name)) is None
    assert store.login(name, PASSWORD).ok


# -- network binding -----------------------------------------------------------------------------
def test_network_binding(store, engine, hasher, name):
    store.create(name, PASSWORD, allowed_networks=("10.1.0.0/16", "2001:db8::/32"))
    assert store.login(name, PASSWORD, address="10.1.2.3").ok
    assert store.login(name, PASSWORD, address="::ffff:10.1.2.3").ok  # dual-stack socket form
    assert store.login(name, PASSWORD, address="2001:db8::7").ok
    before = hasher.verifications
    refused = store.login(name, PASSWORD, address="192.0.2.1")
    assert refused.outcome is LoginOutcome.NETWORK_REFUSED and "192.0.2.1" in refused.message
    # neither the password is looked at nor a failure counted (no remote oracle, no remote lockout)
    for _ in range(6):
        assert store.login(name, "guess", address="192.0.2.1").outcome is LoginOutcome.NETWORK_REFUSED
    assert hasher.verifications == before
    assert _row(engine, name).failed_logins == 0
    assert store.login(name, PASSWORD).outcome is LoginOutcome.NETWORK_REFUSED  # no address: refused
    with pytest.raises(ValueError, match="not an IP address"):
        store.login(name, PASSWORD, address="10.1.2")
    store.set_networks(name, ())
    assert store.login(name, PASSWORD, address="192.0.2.1").ok


# -- disabled accounts and hash upgrades ---------------------------------------------------------
def test_disabled_account(store, engine, name):
    store.create(name, PASSWORD)
    store.disable(name)
    assert store.get(name).disabled
    wrong = store.login(name, "wrong")
    assert wrong.outcome is LoginOutcome.BAD_CREDENTIALS and wrong.user is None  # a stranger learns nothing
    assert _row(engine, name).failed_logins == 1
    disabled = store.login(name, PASSWORD)
    assert disabled.outcome is LoginOutcome.DISABLED and "disabled" in disabled.message
    assert _row(engine, name).failed_logins == 1  # not counted
    store.enable(name)
    assert store.login(name, PASSWORD).ok


def test_weaker_hash_is_upgraded_on_login(engine, clock, name):
    weak = UserStore(engine, clock=clock, hasher=CountingHasher(memory_cost=1024))
    weak.create(name, PASSWORD)
    old_hash = _row(engine, name).password_hash
    assert "m=1024" in old_hash
    strong = UserStore(engine, clock=clock, hasher=CountingHasher(memory_cost=2048))
    assert strong.login(name, PASSWORD).ok
    new_hash = _row(engine, name).password_hash
    assert new_hash != old_hash and "m=2048" in new_hash
    assert strong.login(name, PASSWORD).ok
    assert _row(engine, name).password_hash == new_hash  # not re-hashed again


def test_password_changed_meanwhile_is_not_overwritten(store, engine, clock, name):
    """The success update applies only to the hash that was verified."""
    store.create(name, PASSWORD)
    other_hash = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(OTHER_PASSWORD)
    original = store._row

    def row_then_concurrent_change(username):  # type: ignore[no-untyped-def]
        row = original(username)
        with engine.begin() as conn:
            conn.execute(update(auth_users).where(auth_users.c.username == username).values(password_hash=other_hash))
        store._row = original
        return row

    store._row = row_then_concurrent_change
    assert store.login(name, PASSWORD).outcome is LoginOutcome.BAD_CREDENTIALS
    assert _row(engine, name).password_hash == other_hash
    assert store.login(name, OTHER_PASSWORD).ok
