"""Users and API keys: keys are shown once, stored hashed, and authenticate exactly their holder."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta

import psycopg_pool
import pytest

from tradeengine.engine.errors import ValidationError
from tradeengine.storage.users import LastAdminKey, SystemAccount, UserExists, UserRepository, new_api_key


def test_a_created_user_gets_a_key_that_authenticates_them_with_their_role(
    pg_pool: psycopg_pool.ConnectionPool,
) -> None:
    users = UserRepository(pg_pool)
    alice, key = users.create("alice", "trader")
    principal = users.authenticate(key)
    assert principal is not None
    assert (principal.user_id, principal.name, principal.role) == (alice.id, "alice", "trader")
    assert alice.id >= 1000


def test_only_the_hash_of_a_key_is_stored(pg_pool: psycopg_pool.ConnectionPool) -> None:
    _, key = UserRepository(pg_pool).create("bob", "trader")
    with pg_pool.connection() as conn:
        stored = conn.execute("SELECT key_hash, key_prefix FROM api_keys").fetchall()
    assert stored == [(hashlib.sha256(key.encode()).digest(), key[:10])]


def test_unknown_malformed_and_revoked_keys_authenticate_nobody(pg_pool: psycopg_pool.ConnectionPool) -> None:
    users = UserRepository(pg_pool)
    _, key = users.create("carol", "trader")
    assert users.authenticate(new_api_key()) is None
    assert users.authenticate("not-a-key") is None
    with pg_pool.connection() as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now()")
    assert users.authenticate(key) is None


def test_a_key_is_rotated_by_issuing_a_second_and_revoking_the_first(
    pg_pool: psycopg_pool.ConnectionPool,
) -> None:
    users = UserRepository(pg_pool)
    dave, first = users.create("dave", "admin")
    issued, second = users.issue_key(dave)
    assert first != second and issued.prefix == second[:10] and issued.revoked_at is None
    assert users.authenticate(first) == users.authenticate(second) is not None
    [old, new] = users.keys(dave.id)
    assert (old.prefix, new) == (first[:10], issued)

    answer = users.revoke_key(dave.id, old.id)
    assert answer is not None
    revoked, revoked_now = answer
    assert revoked_now and revoked.revoked_at is not None and revoked.id == old.id
    assert revoked.revoked_at.tzinfo is UTC and revoked.created_at.tzinfo is UTC
    assert users.authenticate(first) is None
    assert users.authenticate(second) is not None
    # revoking again changes nothing, not even the time
    assert users.revoke_key(dave.id, old.id) == (revoked, False)
    assert users.keys(dave.id) == [revoked, issued]
    assert users.active_keys()[dave.id] == 1


def test_times_are_in_utc_whatever_the_sessions_time_zone(migrated_pg_url: str) -> None:
    pool = psycopg_pool.ConnectionPool(migrated_pg_url, min_size=1, max_size=1, open=True,
                                       kwargs={"options": "-c TimeZone=Asia/Tokyo"})
    try:
        users = UserRepository(pool)
        made, _ = users.create("tokyo", "trader")
        with pool.connection() as conn:
            assert conn.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
            stored = conn.execute("SELECT created_at FROM users WHERE id = %s", (made.id,)).fetchone()
        assert stored is not None and stored[0].utcoffset() == timedelta(hours=9)
        for moment in (made.created_at, users.named("tokyo").created_at,  # type: ignore[union-attr]
                       users.keys(made.id)[0].created_at):
            assert moment.tzinfo is UTC and moment == stored[0]
    finally:
        pool.close()


def test_the_last_key_of_the_last_admin_is_kept(pg_pool: psycopg_pool.ConnectionPool) -> None:
    users = UserRepository(pg_pool)
    root, root_key = users.create("root", "admin")
    trader, _ = users.create("trader", "trader")
    [key] = users.keys(root.id)
    with pytest.raises(LastAdminKey):
        users.revoke_key(root.id, key.id)
    assert users.authenticate(root_key) is not None
    [traders_key] = users.keys(trader.id)
    assert users.revoke_key(trader.id, traders_key.id) is not None  # a trader's last key may go
    second, _ = users.create("second", "admin")
    assert users.revoke_key(root.id, key.id) is not None  # another admin holds a key now
    [seconds_key] = users.keys(second.id)
    with pytest.raises(LastAdminKey):
        users.revoke_key(second.id, seconds_key.id)


def test_a_key_is_revoked_only_through_its_own_user(pg_pool: psycopg_pool.ConnectionPool) -> None:
    users = UserRepository(pg_pool)
    erin, erins_key = users.create("erin", "trader")
    frank, _ = users.create("frank", "trader")
    [key] = users.keys(erin.id)
    assert users.revoke_key(frank.id, key.id) is None
    assert users.revoke_key(erin.id, key.id + 1000) is None
    assert users.authenticate(erins_key) is not None


def test_users_are_listed_in_id_order_page_by_page_and_found_by_name(
    pg_pool: psycopg_pool.ConnectionPool,
) -> None:
    users = UserRepository(pg_pool)
    made = [users.create(f"u{n}", "trader")[0] for n in range(5)]
    fee_account = users.page(limit=1)[0]
    assert (fee_account.id, fee_account.role) == (1, "system")
    assert users.page(after=fee_account.id, limit=3) == made[:3]
    assert users.page(after=made[2].id, limit=3) == made[3:]
    assert users.named("u3") == made[3] and users.named("nobody") is None


def test_the_fee_account_holds_no_keys(pg_pool: psycopg_pool.ConnectionPool) -> None:
    users = UserRepository(pg_pool)
    fee_account = users.get(1)
    assert fee_account is not None
    with pytest.raises(SystemAccount):
        users.issue_key(fee_account)
    assert users.keys(1) == []


def test_a_taken_name_or_a_bad_role_or_name_is_refused_and_nothing_is_stored(
    pg_pool: psycopg_pool.ConnectionPool,
) -> None:
    users = UserRepository(pg_pool)
    users.create("erin", "trader")
    with pytest.raises(UserExists):
        users.create("erin", "admin")
    with pytest.raises(ValidationError):
        users.create("frank", "superuser")
    with pytest.raises(ValidationError):
        users.create("no spaces allowed", "trader")
    with pg_pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE role <> 'system'").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (1,)


def test_the_bootstrap_admin_is_created_once_even_by_concurrent_starts(
    pg_pool: psycopg_pool.ConnectionPool,
) -> None:
    users = UserRepository(pg_pool)
    key = new_api_key()
    with ThreadPoolExecutor(4) as pool:
        created = list(pool.map(lambda _: users.ensure_admin(key), range(4)))
    assert len([user for user in created if user is not None]) == 1
    principal = users.authenticate(key)
    assert principal is not None and principal.role == "admin"
    assert users.ensure_admin(new_api_key()) is None


def test_the_bootstrap_admin_takes_the_next_free_name_when_a_trader_is_called_admin(
        pg_pool: psycopg_pool.ConnectionPool) -> None:
    users = UserRepository(pg_pool)
    users.create("admin", "trader")
    users.create("admin-2", "trader")
    key = new_api_key()
    admin = users.ensure_admin(key)
    assert admin is not None and (admin.name, admin.role) == ("admin-3", "admin")
    holder = users.authenticate(key)
    assert holder is not None and holder.name == "admin-3"


def test_a_weak_bootstrap_key_is_refused(pg_pool: psycopg_pool.ConnectionPool) -> None:
    with pytest.raises(ValidationError):
        UserRepository(pg_pool).ensure_admin("te_short")
