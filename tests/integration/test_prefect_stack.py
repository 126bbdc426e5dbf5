"""The stack's Prefect server meets a database it cannot open: one clear message, and a way on."""

from __future__ import annotations

import sqlite3

import pytest

from adaptflow.infra.prefect_stack import PrefectStack
from adaptflow.tasks.errors import ConfigError
from tests.integration.prefect_rest import rest


def test_a_database_from_another_prefect_release_gets_a_clear_message_and_a_fresh_start(tmp_path):
    stack = PrefectStack(tmp_path / "home")
    stack.prefect_home.mkdir(parents=True)
    with sqlite3.connect(stack.sqlite_database) as db:  # what a newer Prefect leaves: a schema revision unknown here
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('f00dfeedbeef')")

    with pytest.raises(ConfigError) as failed:
        stack.up(worker=False, timeout=120)
    message = str(failed.value)
    assert str(stack.sqlite_database) in message and "'f00dfeedbeef'" in message and "--new-prefect-database" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1
    assert stack.status() is None

    info = stack.up(worker=False, timeout=120, new_database=True)
    try:
        assert rest(info.api_url, "GET", "/health").status_code == 200
        kept = list(stack.prefect_home.glob("prefect.db.bak-*"))
        assert kept, "the old database was not kept"
        with sqlite3.connect(kept[0]) as db:
            assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("f00dfeedbeef",)]
    finally:
        stack.down()
