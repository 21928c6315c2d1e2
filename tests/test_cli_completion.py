"""Shell completion: every --client option of every `reactive` command completes the configured clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer

from cli.main import app

# Typer vendors its own click (typer._click): its commands are walked by what they do, not by class.


def commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Every leaf command of the CLI, with its full name ("dlq list"), subgroups included."""
    ctx = group.context_class(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if hasattr(command, "list_commands"):
            yield from commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def client_options() -> list[tuple[str, Any, Any]]:
    root = typer.main.get_command(app)
    assert hasattr(root, "list_commands")
    return [
        (name, command, param)
        for name, command in commands(root)
        for param in command.params
        if "--client" in getattr(param, "opts", ())
    ]


def test_the_commands_that_take_a_client_are_all_found() -> None:
    """The introspection below must see the commands it checks (a walk that found none would pass)."""
    found = {name for name, _, _ in client_options()}
    expected = {"listen", "tail", "beat", "provision", "login-link", "replay-dlq", "status", "sync", "verify"}
    assert expected <= found
    assert {"dlq list", "dlq show", "dlq purge"} <= found


@pytest.mark.parametrize(
    ("name", "command", "param"), client_options(), ids=[name for name, _, _ in client_options()]
)
def test_every_client_option_completes_the_configured_client_names(
    name: str, command: Any, param: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REACTIVE_CLIENTS", "alpha,beta,alpine")
    ctx = command.context_class(command, info_name=name)
    offered = [item.value for item in param.shell_complete(ctx, "al")]
    assert offered == ["alpha", "alpine"], f"reactive {name} --client completes nothing"
