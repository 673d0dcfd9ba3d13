"""`driftrec keys create/list/revoke`: the key is printed once, only its hash is stored."""

from __future__ import annotations

import hashlib
import logging

from cli_helpers import invoke, ok
from sqlalchemy import select

from store.db import Database
from store.keys import authenticate
from store.models import ApiKey


def test_create_list_revoke(cli_env, caplog):
    caplog.set_level(logging.DEBUG)
    ok(invoke(cli_env, "db", "upgrade"))
    created = ok(invoke(cli_env, "keys", "create", "--name", "frontend", "--scope", "read"))
    key = created.stdout.strip()
    assert key.startswith("drk_") and "\n" not in key
    assert "shown once" in created.stderr
    both = ok(invoke(cli_env, "keys", "create", "--name", "backend", "--scope", "read,write"))
    other = both.stdout.strip()

    db = Database(cli_env["DRIFTREC_DATABASE_URL"])
    try:
        with db.read() as session:
            rows = list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
            assert [(r.name, r.scopes) for r in rows] == [
                ("frontend", "read"),
                ("backend", "read,write"),
            ]
            assert rows[0].key_hash == hashlib.sha256(key.encode()).hexdigest()
            assert key not in {
                value for r in rows for value in vars(r).values() if isinstance(value, str)
            }
            assert authenticate(session, key).scopes == {"read"}
            prefix = rows[0].prefix

        listed = ok(invoke(cli_env, "keys", "list")).stdout
        assert f"prefix={prefix} scopes=read name='frontend'" in listed
        assert key not in listed and other not in listed

        assert "key revoked" in ok(invoke(cli_env, "keys", "revoke", prefix)).stdout
        with db.read() as session:
            assert authenticate(session, key) is None
            assert authenticate(session, other) is not None
        assert "frontend" not in ok(invoke(cli_env, "keys", "list")).stdout
        assert "revoked=" in ok(invoke(cli_env, "keys", "list", "--all")).stdout
    finally:
        db.dispose()

    bad = invoke(cli_env, "keys", "create", "--name", "x", "--scope", "root")
    assert bad.exit_code == 1 and "unknown scope 'root'" in bad.output
    missing = invoke(cli_env, "keys", "revoke", "nope")
    assert missing.exit_code == 1 and "no API key" in missing.output
    assert key not in caplog.text and other not in caplog.text


def test_serve_warns_when_auth_is_disabled_off_loopback(cli_env, monkeypatch, caplog):
    from service import cli as cli_module

    assert cli_module.is_loopback("::1") and cli_module.is_loopback("127.0.0.2")
    assert not cli_module.is_loopback("0.0.0.0") and not cli_module.is_loopback("::")
    ok(invoke(cli_env, "db", "upgrade"))
    started = []

    def fake_exec(path, argv):  # instead of replacing this process with gunicorn
        started.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(cli_module.os, "execv", fake_exec)
    open_env = {**cli_env, "DRIFTREC_AUTH": "disabled"}
    for env, host, warned in (
        (open_env, "0.0.0.0", True),
        (open_env, "127.0.0.1", False),
        (cli_env, "0.0.0.0", False),
    ):
        caplog.clear()
        result = invoke(env, "serve", "--host", host, "--port", "8123")
        assert result.exit_code == 0, result.output
        assert ("DRIFTREC_AUTH=disabled and listening on 0.0.0.0" in result.stderr) is warned
        assert ("auth disabled on a non-loopback address" in caplog.text) is warned
    assert len(started) == 3 and "0.0.0.0:8123" in started[0]
