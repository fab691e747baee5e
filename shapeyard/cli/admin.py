"""`shapeyard admin`: accounts and keys, straight in the database, as the operator of the machine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from shapeyard.cli.common import DatabaseUrl, DataDir, console
from shapeyard.control.settings import ServerSettings
from shapeyard.store import accounts
from shapeyard.store.db import Database
from shapeyard.wire.errors import ShapeyardError

app = typer.Typer(help="Accounts and keys, straight in the database (operator only).", no_args_is_help=True)
T = TypeVar("T")


def _in_database(data_dir: Path, database_url: str | None, action: Callable[[Session], T]) -> T:
    """Run `action(session)` in one transaction on the server's database, creating or migrating it first."""
    settings = ServerSettings(data_dir=data_dir, database_url=database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    try:
        db.upgrade()
        with db.session() as session:
            return action(session)
    except ShapeyardError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    finally:
        db.dispose()


@app.command("create-account")
def admin_create_account(
    name: Annotated[str, typer.Argument(help="Account id: lowercase letters, digits, dashes.")],
    data_dir: DataDir = Path("data"),
    database_url: DatabaseUrl = None,
    tinker: Annotated[bool, typer.Option(help="Also mint a tml- key for the tinker client.")] = True,
) -> None:
    """Create an account and print its first API key(s)."""

    def create(session: Session) -> list[str]:
        accounts.create_account(session, name)
        keys = [accounts.add_key(session, name)]
        if tinker:
            keys.append(accounts.add_key(session, name, tinker=True))
        return keys

    keys = _in_database(data_dir, database_url, create)
    console.print(f"account [bold]{name}[/bold]")
    for key in keys:
        console.print(f"  key {key}")


@app.command("create-key")
def admin_create_key(
    account: str,
    data_dir: DataDir = Path("data"),
    database_url: DatabaseUrl = None,
    tinker: Annotated[bool, typer.Option(help="A tml- key, as the tinker client requires.")] = False,
    admin: Annotated[bool, typer.Option(help="May edit the shape catalog and use skipValidations.")] = False,
) -> None:
    """Mint another API key for an account."""
    console.print(
        _in_database(data_dir, database_url, lambda s: accounts.add_key(s, account, tinker=tinker, admin=admin))
    )


@app.command("list-accounts")
def admin_list_accounts(data_dir: DataDir = Path("data"), database_url: DatabaseUrl = None) -> None:
    def rows(session: Session) -> list[list[str]]:
        result = []
        for account in accounts.list_accounts(session):
            keys = accounts.list_keys(session, account.name)
            labels = ", ".join(f"{k.prefix}...{' (admin)' if k.is_admin else ''}" for k in keys)
            result.append([account.name, labels, str(account.create_time)])
        return result

    table = Table("account", "keys", "created")
    for row in _in_database(data_dir, database_url, rows):
        table.add_row(*row)
    console.print(table)
