"""Who is asking: the configured users, each with their own token or password and a role, and the
shared operator credential of earlier releases (WATCHKEEPER_OPERATOR_TOKEN, or WATCHKEEPER_API_TOKEN).

A `viewer` reads incidents; an `operator` also acts on them. With no credential configured at all
(the loopback default) everyone is `anonymous (loopback)`, an operator. Passwords are kept as
salted scrypt hashes (`hash_password`); tokens come from the environment or Prefect Secret blocks.
Every comparison takes constant time, so a wrong guess does not reveal how much of it was right.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from watchkeeper.config import SecretRef, User
from watchkeeper.secrets import resolve_secret
from watchkeeper.settings import Role

OPERATOR = "operator"  # the other role, "viewer", reads only
# scrypt's cost: 16 MB and about 50 ms a check on this project's 2-core machine.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class Person:
    """`name` is what the timeline, the audit trail and the assignee show."""

    name: str
    role: str

    @property
    def can_act(self) -> bool:
        return self.role == OPERATOR

    @property
    def refusal(self) -> str:
        """What a press of theirs is told when they may not act."""
        return f"{self.name} is a {self.role}: acting needs the operator role"


ANONYMOUS = Person("anonymous (loopback)", OPERATOR)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash`, both base64: what a user's `password_hash` holds."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), *encoded])


def password_matches(password: str, stored: str) -> bool:
    _scheme, n, r, p, salt, digest = stored.split("$")
    expected = base64.b64decode(digest)
    presented = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        maxmem=128 * int(n) * int(r) * int(p) + 2**20,
        dklen=len(expected),
    )
    return hmac.compare_digest(presented, expected)


def same(presented: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(presented.encode(), expected.encode())


class People:
    """The people the service knows, by token and by name and password."""

    def __init__(
        self,
        users: list[User],
        operator: Role,
        resolve: Callable[[SecretRef], str] = resolve_secret,
    ) -> None:
        self.tokens = [(resolve(u.token), Person(u.name, u.role)) for u in users if u.token is not None]
        self.passwords = {u.name: (u.password_hash, Person(u.name, u.role)) for u in users if u.password_hash}
        self.legacy = operator
        self.roles = {u.name: u.role for u in users}
        if operator.required:
            self.roles[operator.identity("bearer")] = OPERATOR

    @property
    def required(self) -> bool:
        return bool(self.tokens or self.passwords) or self.legacy.required

    def now(self, name: str) -> Person | None:
        """The person of this name as the configuration has them now (a session outlives neither
        their removal nor a change of role)."""
        role = self.roles.get(name)
        return Person(name, role) if role is not None else None

    def by_token(self, token: str) -> Person | None:
        found = None
        for expected, person in self.tokens:  # every one compared: the time says nothing of which
            if same(token, expected):
                found = person
        if same(token, self.legacy.bearer):
            found = found or Person(self.legacy.identity("bearer"), OPERATOR)
        return found

    def by_password(self, name: str, password: str) -> Person | None:
        stored, person = self.passwords.get(name, (None, None))
        if stored is None:
            password_matches(password, dummy_hash())  # as long for an unknown name as for a known one
            return None
        return person if password_matches(password, stored) else None


@cache
def dummy_hash() -> str:
    return hash_password("", salt=b"\0" * 16)
