"""`reactive verify`: the comparison itself, and its refusals (the real two-database run is in tests/e2e)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from reactive.errors import ConfigError, UsageError
from reactive.verify import Row, compare, redact

runner = CliRunner()
FIELDS = ["username", "first_name"]


def row(key: str, version: int | None, username: str = "u", first_name: str = "") -> Row:
    return Row(key, version, {"username": username, "first_name": first_name})


def test_compare_finds_missing_extra_and_stale_rows() -> None:
    master = {
        "1": row("1", 5, "alice", "Alice"),
        "2": row("2", 7, "bob"),
        "3": row("3", 9, "carol", "Carol"),
        "4": row("4", None, "dave"),  # outbox rows pruned: version unknown
        "10": row("10", 3, "erin"),
    }
    replica = {
        "1": row("1", 5, "alice", "Alice"),
        "3": row("3", 8, "carol", "Caroline"),
        "4": row("4", 2, "dave"),
        "10": Row("10", 3, None),  # the state row points at a deleted local user
        "11": row("11", 4, "zed"),
    }

    found = {d.key: d for d in compare(master, replica, FIELDS)}

    assert set(found) == {"2", "3", "10", "11"}
    assert (found["2"].kind, found["2"].master_version, found["2"].replica_version) == ("missing", 7, None)
    assert found["10"].kind == "missing" and "deleted local user" in found["10"].detail
    assert found["11"].kind == "extra" and found["11"].username == "zed"
    assert found["3"].kind == "stale"
    assert "version 8 < 9" in found["3"].detail and "first_name: 'Caroline' != 'Carol'" in found["3"].detail
    assert [d.key for d in compare(master, replica, FIELDS)] == ["2", "3", "10", "11"]  # numeric key order


def test_a_newer_replica_version_with_equal_content_is_not_stale() -> None:
    assert compare({"1": row("1", 5)}, {"1": row("1", 6)}, FIELDS) == []


def test_the_same_database_on_both_sides_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.sqlite3'}"
    result = runner.invoke(app, ["verify", "--client", "alpha", "--master-db", url, "--client-db", url])
    assert result.exit_code == 1
    assert isinstance(result.exception, UsageError) and "are the same" in str(result.exception)


def test_a_missing_database_file_is_named_and_never_created(tmp_path: Path) -> None:
    master, client = tmp_path / "master.sqlite3", tmp_path / "client.sqlite3"
    master.touch()
    args = [
        "verify",
        "--client",
        "alpha",
        "--master-db",
        f"sqlite:///{master}",
        "--client-db",
        f"sqlite:///{client}",
    ]
    result = runner.invoke(app, args)
    assert isinstance(result.exception, ConfigError) and f"no client alpha database at {client}" in str(
        result.exception
    )
    assert not client.exists()


def test_passwords_are_kept_out_of_messages() -> None:
    assert redact("postgres://ops:s3cret@db:5432/alpha") == "postgres://ops:***@db:5432/alpha"
    assert redact("sqlite:////tmp/a.sqlite3") == "sqlite:////tmp/a.sqlite3"


def test_a_replica_ahead_of_the_masters_outbox_sequence_is_not_ok() -> None:
    """A restored master hands out ids the replica has seen: the report says so even with no row differing,
    and not where the master's database cannot tell its sequence."""
    from reactive.verify import VerifyReport

    restored = VerifyReport("alpha", 2, 2, FIELDS, replica_top_version=40, outbox_sequence=12)
    assert restored.sequence_behind and not restored.ok and restored.to_dict()["sequence_behind"] is True
    assert VerifyReport("alpha", 2, 2, FIELDS, replica_top_version=12, outbox_sequence=12).ok
    assert VerifyReport("alpha", 2, 2, FIELDS, replica_top_version=40, outbox_sequence=None).ok
