"""Granting jobpool's group roles to login roles, and binding client roles to tenants.

The security model (migration ``0003_security.sql``) has four NOLOGIN group roles:
``jobpool_owner`` (owns the schema; migrations), ``jobpool_worker``,
``jobpool_operator`` and ``jobpool_client``. A login role gets one of them with
:func:`role_grant`; a client role also needs the tenants it may act for, stored in
``jobpool_tenant_roles`` — or :data:`ANY_TENANT`, the "trusted application" mode in
which the role may name any tenant in its ``jobpool.tenant`` setting.

Both happen in one transaction, run by an administrator: a member of
``jobpool_owner`` (to write the tenant map) holding the group role with ADMIN OPTION
(or ``CREATEROLE``, or superuser) to grant it.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import asyncpg
from asyncpg import Connection

from jobpool.errors import AccessDenied, InvalidInput, InvalidName
from jobpool.models import check_tenant
from jobpool.store.queries import QUERIES

ANY_TENANT = "*"


class RoleKind(StrEnum):
    """What a login role is for; each is one group role."""

    OWNER = "owner"
    WORKER = "worker"
    OPERATOR = "operator"
    CLIENT = "client"

    @property
    def group(self) -> str:
        return f"jobpool_{self.value}"


async def role_grant(
    conn: Connection, login: str, kind: RoleKind, *, tenants: Sequence[str] = ()
) -> None:
    """Make ``login`` a member of ``kind``'s group role; a client also acts for ``tenants``."""
    checked = _tenants(kind, tenants)
    if not await conn.fetchval(*QUERIES.bind("role_exists", role=login)):
        raise InvalidName(f"no database role {login!r}: create it first (CREATE ROLE … LOGIN)")
    try:
        async with conn.transaction():
            await conn.execute(
                await conn.fetchval(*QUERIES.bind("role_grant", role=kind.group, member=login))
            )
            if checked:
                await conn.execute(*QUERIES.bind("tenant_role_map", role=login, tenants=checked))
    except asyncpg.InsufficientPrivilegeError as exc:
        raise AccessDenied(
            f"cannot grant {kind.group} to {login!r}: {exc} (run this as a member of "
            f"jobpool_owner holding {kind.group} WITH ADMIN OPTION, or as a superuser)"
        ) from None


def _tenants(kind: RoleKind, tenants: Sequence[str]) -> list[str]:
    if kind is not RoleKind.CLIENT:
        if tenants:
            raise InvalidInput(f"tenants apply to client roles only, not to {kind.value} roles")
        return []
    if not tenants:
        raise InvalidInput(
            f"a client role needs the tenants it acts for (or {ANY_TENANT!r}: any tenant)"
        )
    return [t if t == ANY_TENANT else check_tenant(t) for t in dict.fromkeys(tenants)]
