"""`GET /v1/accounts`: the SDK resolves its account from the key, and needs exactly one."""

from __future__ import annotations

from shapeyard.control.deps import CallerDep, PlaneDep, WireRouter
from shapeyard.store.tables import Account
from shapeyard.wire import names, routes
from shapeyard.wire.control import AccountResource, ListAccountsResponse

router = WireRouter(tags=["accounts"])


@router.get(routes.ACCOUNTS)
def list_accounts(caller: CallerDep, control: PlaneDep) -> ListAccountsResponse:
    """The caller's own account, the only one a key names."""
    with control.db.session() as session:
        account = session.get(Account, caller.account)
        resource = AccountResource(
            name=names.account_name(account.name),
            display_name=account.display_name,
            create_time=account.create_time,
        )
    return ListAccountsResponse(accounts=[resource])
