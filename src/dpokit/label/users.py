"""Annotators and their passwords: scrypt (a memory-hard key-derivation function), never the password itself.

A stored hash reads `scrypt$16384$8$1$<salt hex>$<hash hex>`, so a later release can raise the cost and still check
old hashes. Failed log-ins are counted per annotator (the server slows the next attempt by that count).
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from sqlalchemy import select

from ..errors import UserError
from . import store

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1  # 16 MiB of memory per check: the interactive-login cost RFC 7914 names
SALT_BYTES, HASH_BYTES = 16, 32
MAX_NAME = 64


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    is_admin: bool


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P,
                  salt: bytes | None = None) -> str:
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, n, r, p)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = bytes.fromhex(digest)
        return hmac.compare_digest(_scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p), len(expected)),
                                   expected)
    except ValueError:  # a malformed hash never matches
        return False


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int = HASH_BYTES) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=256 * r * (n + p + 2))


# A hash to check against when the name is unknown, so an unknown name takes as long as a wrong password.
_DUMMY = hash_password("dpokit: no such annotator", salt=b"\0" * SALT_BYTES)


def check_name(name: str) -> str:
    clean = name.strip() if isinstance(name, str) else ""
    if not clean:
        raise UserError("annotator name is empty; give a name such as alice")
    if len(clean) > MAX_NAME or not clean.isprintable():
        raise UserError(f"annotator name {clean[:MAX_NAME]!r} must be at most {MAX_NAME} printable characters")
    return clean


def add_user(project, name: str, password: str, admin: bool = False) -> int:
    """A new annotator (an admin sees the admin page); returns their id."""
    name = check_name(name)
    if not isinstance(password, str) or not password:
        raise UserError(f"annotator {name!r}: the password is empty")
    password_hash = hash_password(password)  # before the transaction: the KDF takes a while, the lock should not
    with project.session(lock=True) as session:
        if session.scalar(select(store.Annotator.id).where(store.Annotator.name == name)) is not None:
            raise UserError(f"annotator {name!r} already exists in {project.folder}; choose another name")
        row = store.Annotator(name=name, password_hash=password_hash, is_admin=bool(admin), failed_logins=0)
        session.add(row)
        session.flush()
        return row.id


def check_login(project, name: str, password: str) -> Annotator | None:
    """The annotator when `password` is theirs; None otherwise (and the failure is counted on the name)."""
    with project.session() as session:
        row = session.scalar(select(store.Annotator).where(store.Annotator.name == (name or "").strip()))
        stored = row.password_hash if row is not None else _DUMMY
        annotator_id = None if row is None else row.id
    good = verify_password(password or "", stored) and annotator_id is not None
    if annotator_id is not None:
        with project.session(lock=True) as session:
            row = session.get(store.Annotator, annotator_id, with_for_update=True)
            if good:
                row.failed_logins, row.last_failed_at = 0, None
            else:
                row.failed_logins += 1
                row.last_failed_at = store.now()
    return Annotator(row.id, row.name, row.is_admin) if good else None


def failed_logins(project, name: str) -> int:
    """Failed log-ins since the last good one (0 for an unknown name): how much the server slows the next try."""
    with project.session() as session:
        count = session.scalar(select(store.Annotator.failed_logins).where(store.Annotator.name == (name or "").strip()))
    return count or 0


def get_annotator(project, annotator_id: int) -> Annotator | None:
    with project.session() as session:
        row = session.get(store.Annotator, annotator_id)
        return None if row is None else Annotator(row.id, row.name, row.is_admin)


def list_annotators(project) -> list[Annotator]:
    with project.session() as session:
        rows = session.scalars(select(store.Annotator).order_by(store.Annotator.id))
        return [Annotator(r.id, r.name, r.is_admin) for r in rows]
