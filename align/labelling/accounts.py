"""Annotator accounts for the labelling app: a users file, or the ALIGN_LABEL_USERS environment variable.

    align labels add-user users.txt alice            # asks for the password, stores a salted hash
    align labels add-user users.txt carol --admin    # admins also see the statistics tab

One account per line, `name:password` or `name:password:admin`; the password may be plain text or the
`pbkdf2_sha256$...` hash that add-user writes (a plain password cannot contain ':'). Blank lines and lines starting with # are ignored.
ALIGN_LABEL_USERS holds the same entries separated by commas (plain passwords; for quick local use).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

HASH_PREFIX = "pbkdf2_sha256"
HASH_ITERATIONS = 200_000
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
USERS_ENV = "ALIGN_LABEL_USERS"


class AccountError(ValueError):
    """A users file or entry that cannot be used; the message names the file and line."""


def hash_password(password: str, salt: str | None = None, iterations: int = HASH_ITERATIONS) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"{HASH_PREFIX}${iterations}${salt}${digest}"


def password_matches(stored: str, given: str) -> bool:
    if stored.startswith(HASH_PREFIX + "$"):
        _, iterations, salt, _digest = stored.split("$", 3)
        return hmac.compare_digest(hash_password(given, salt, int(iterations)), stored)
    return hmac.compare_digest(stored.encode(), given.encode())


def parse_accounts(lines: list[str], where: str, unit: str = "line") -> dict[str, dict]:
    """{name: {"password": stored form, "admin": bool}}; duplicate or malformed entries are errors."""
    accounts: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        at = f"{where}: {unit} {number}"
        parts = line.split(":")
        admin = len(parts) >= 3 and parts[-1] == "admin"
        if admin:
            parts = parts[:-1]
        if len(parts) != 2 or not parts[1]:
            raise AccountError(f"{at}: expected name:password or name:password:admin")
        name, password = parts
        if password.startswith(HASH_PREFIX + "$") and not re.fullmatch(
                re.escape(HASH_PREFIX) + r"\$\d+\$[^$]+\$[0-9a-f]{64}", password):
            raise AccountError(f"{at}: password hash of '{name}' is damaged (expected {HASH_PREFIX}$N$salt$hex)")
        if not NAME_PATTERN.match(name):
            raise AccountError(f"{at}: user name '{name}' may use letters, digits and _ . @ - (at most 64)")
        if name in accounts:
            raise AccountError(f"{at}: user '{name}' is listed twice")
        accounts[name] = {"password": password, "admin": admin}
    return accounts


def load_accounts(users_file: str | None) -> dict[str, dict]:
    """Accounts from the users file and/or ALIGN_LABEL_USERS (a name in both is an error)."""
    accounts: dict[str, dict] = {}
    if users_file:
        path = Path(users_file).expanduser()
        if not path.is_file():
            raise AccountError(f"{users_file}: users file not found (create one with `align labels add-user`)")
        accounts.update(parse_accounts(path.read_text(encoding="utf-8").splitlines(), str(path)))
    env = os.environ.get(USERS_ENV, "")
    for name, account in parse_accounts(env.split(","), USERS_ENV, unit="entry").items():
        if name in accounts:
            raise AccountError(f"{USERS_ENV}: user '{name}' is also in {users_file}")
        accounts[name] = account
    return accounts


def add_account(users_file: str, name: str, password: str, admin: bool = False) -> None:
    """Append a hashed entry; refuses a name that is already there (edit the file to change a password)."""
    path = Path(users_file).expanduser()
    existing = parse_accounts(path.read_text(encoding="utf-8").splitlines(), str(path)) if path.is_file() else {}
    if name in existing:
        raise AccountError(f"{users_file}: user '{name}' already exists")
    if not NAME_PATTERN.match(name):
        raise AccountError(f"user name '{name}' may use letters, digits and _ . @ - (at most 64)")
    if len(password) < 8:
        raise AccountError("password: use at least 8 characters")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"{name}:{hash_password(password)}{':admin' if admin else ''}\n")
    os.chmod(path, 0o600)


# ---------------------------------------------------------------------------------------------- login throttling

# An unknown name is checked against this, so a guess costs the same work whatever the name (no timing hint).
UNKNOWN_ACCOUNT_HASH = hash_password(secrets.token_hex(16))


class LoginGuard:
    """Failed logins are limited per account name and per client address. After each failure on an account its
    next attempt waits a growing delay (first_delay, doubling), and `max_failures` failures in a row lock it for
    `lock_seconds`; an address (maybe an office behind one NAT) is only locked, after 3x as many failures. A refused attempt is answered like a wrong password (whether or not the account exists) and
    costs no hashing. A success clears the account's and the address's record. With the defaults at most
    10 guesses per account reach the password check in 15 minutes (40 an hour; OWASP ASVS 2.2.1 asks for at
    most 100)."""

    def __init__(self, accounts: dict[str, dict], max_failures: int = 10, lock_seconds: float = 900.0,
                 first_delay: float = 1.0, log=print, clock=None):
        import threading
        import time

        self.accounts, self.max_failures, self.lock_seconds = accounts, max_failures, lock_seconds
        self.first_delay, self.log = first_delay, log
        self.clock = clock or time.monotonic
        self.failures: dict[tuple[str, str], tuple[int, float]] = {}  # key -> (failures in a row, blocked until)
        self.lock = threading.Lock()
        self.checked = 0  # attempts that reached the password check

    def limits(self, key: tuple[str, str]) -> int:
        # an address may be shared (an office behind one NAT), so it gets more room than one account
        return self.max_failures * (3 if key[0] == "address" else 1)

    def check(self, name: str, password: str, address: str = "unknown") -> bool:
        import time

        keys = [("account", name), ("address", address)]
        now = self.clock()
        with self.lock:
            blocked = [(key, until) for key in keys for _, until in [self.failures.get(key, (0, 0.0))] if until > now]
            if blocked:
                key, until = max(blocked, key=lambda b: b[1])
                self.log(f"{time.strftime('%Y-%m-%d %H:%M:%S')} login refused without checking: {key[0]} "
                         f"{key[1]!r} from {address} is throttled for {until - now:.0f} s more")
                return False
            self.checked += 1
        account = self.accounts.get(name)
        ok = password_matches(account["password"] if account else UNKNOWN_ACCOUNT_HASH, password) and account is not None
        with self.lock:
            if ok:
                for key in keys:
                    self.failures.pop(key, None)
                return True
            for key in keys:
                count = self.failures.get(key, (0, 0.0))[0] + 1
                locked = count >= self.limits(key)
                delay = min(self.first_delay * 2 ** (count - 1), self.lock_seconds) if key[0] == "account" else 0.0
                wait = self.lock_seconds if locked else delay
                # a lock served in full starts the count again
                self.failures[key] = (0 if locked else count, now + wait)
            self.log(f"{time.strftime('%Y-%m-%d %H:%M:%S')} login failed: account {name!r} from {address}")
        return False
