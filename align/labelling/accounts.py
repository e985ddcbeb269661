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
