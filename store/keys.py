"""API keys: ``drk_<prefix>_<secret>`` tokens of which the database keeps only a sha256 hash.

The prefix (8 random hex characters) is stored in clear to find the row; the hash of the whole
token is compared in constant time. A token is shown once, when it is created. Scopes: ``read``
(recommendations, similar, search, reading users and items), ``write`` (events) and ``admin``
(catalogue, deleting users, index/model/key management); ``admin`` implies the other two.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.errors import NotFound, StoreError
from store.models import ApiKey
from store.types import utcnow

SCOPES = ("read", "write", "admin")
TOKEN_PREFIX = "drk_"
PREFIX_BYTES = 4  # 8 hex characters
SECRET_BYTES = 32


class InvalidScope(StoreError, ValueError):
    """A scope name that is not read, write or admin."""


@dataclass(frozen=True)
class KeyInfo:
    """What a request learns about the key that authenticated it."""

    id: int
    name: str
    prefix: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalise_scopes(scopes: Iterable[str]) -> list[str]:
    found = []
    for scope in scopes:
        for part in scope.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in SCOPES:
                raise InvalidScope(f"unknown scope {part!r}: use {', '.join(SCOPES)}")
            if part not in found:
                found.append(part)
    if not found:
        raise InvalidScope(f"a key needs at least one scope: {', '.join(SCOPES)}")
    return sorted(found, key=SCOPES.index)


def create_key(session: Session, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """Add a key; returns the row and the token, which is never stored or shown again."""
    scope_list = normalise_scopes(scopes)
    while True:
        prefix = secrets.token_hex(PREFIX_BYTES)
        if session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is None:
            break
    token = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiKey(name=name, prefix=prefix, key_hash=hash_token(token), scopes=",".join(scope_list))
    session.add(row)
    session.flush()
    return row, token


def _split(token: str) -> str | None:
    """The prefix of a well-formed token, else None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    prefix, sep, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not secret or len(prefix) != 2 * PREFIX_BYTES:
        return None
    return prefix


def authenticate(session: Session, token: str) -> KeyInfo | None:
    """The live key ``token`` belongs to, or None (unknown, malformed, wrong secret, revoked)."""
    prefix = _split(token)
    if prefix is None:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, hash_token(token)):
        return None
    return KeyInfo(row.id, row.name, row.prefix, frozenset(row.scopes.split(",")))


def list_keys(session: Session, *, include_revoked: bool = True) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def revoke_key(session: Session, ref: str) -> ApiKey:
    """Revoke the key whose prefix (or numeric id, or name if unique) is ``ref``."""
    candidates = list(session.scalars(select(ApiKey).where(ApiKey.prefix == ref)))
    if not candidates and ref.isdigit():
        candidates = list(session.scalars(select(ApiKey).where(ApiKey.id == int(ref))))
    if not candidates:
        candidates = list(
            session.scalars(select(ApiKey).where(ApiKey.name == ref, ApiKey.revoked_at.is_(None)))
        )
    if not candidates:
        raise NotFound(f"no API key with prefix, id or name {ref!r}")
    if len(candidates) > 1:
        raise StoreError(f"{len(candidates)} keys are named {ref!r}: revoke by prefix")
    row = candidates[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
