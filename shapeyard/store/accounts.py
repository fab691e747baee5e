"""Accounts and API keys. Keys are stored as SHA-256 digests; the plaintext is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shapeyard.store.tables import Account, ApiKey
from shapeyard.wire.errors import AlreadyExists, InvalidArgument, NotFound
from shapeyard.wire.names import check_id

# The tinker client refuses keys without this prefix; the fireworks-ai client treats such keys as foreign.
TINKER_KEY_PREFIX = "tml-"
FIREWORKS_KEY_PREFIX = "fw_"


@dataclass(frozen=True)
class Caller:
    account: str
    is_admin: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key(tinker: bool = False) -> str:
    return (TINKER_KEY_PREFIX if tinker else FIREWORKS_KEY_PREFIX) + secrets.token_hex(20)


def create_account(session: Session, name: str, display_name: str = "") -> Account:
    check_id("account id", name)
    if session.get(Account, name) is not None:
        raise AlreadyExists(f"account {name} already exists")
    account = Account(name=name, display_name=display_name or name)
    session.add(account)
    session.flush()
    return account


def ensure_account(session: Session, name: str) -> Account:
    return session.get(Account, name) or create_account(session, name)


def add_key(
    session: Session, account: str, key: str | None = None, *, tinker: bool = False, admin: bool = False
) -> str:
    """Register a key for an account and return its plaintext; an existing key must belong to that account."""
    if session.get(Account, account) is None:
        raise NotFound(f"account {account} does not exist")
    key = key or generate_key(tinker)
    if len(key) < 8:
        raise InvalidArgument("an API key must be at least 8 characters long")
    existing = session.get(ApiKey, hash_key(key))
    if existing is not None:
        if existing.account != account:
            raise AlreadyExists("this API key already belongs to another account")
        existing.is_admin = existing.is_admin or admin
        return key
    session.add(ApiKey(key_sha256=hash_key(key), account=account, prefix=key[:8], is_admin=admin))
    session.flush()
    return key


def caller_for_key(session: Session, key: str) -> Caller | None:
    row = session.get(ApiKey, hash_key(key))
    return Caller(row.account, row.is_admin) if row else None


def list_accounts(session: Session) -> list[Account]:
    return list(session.scalars(select(Account).order_by(Account.name)))


def list_keys(session: Session, account: str) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.account == account).order_by(ApiKey.create_time)))
