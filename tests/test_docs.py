"""The README stays true: every setting the code reads is in its table, every command in its CLI table,
and the files it and docs/ link to exist."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CODE_DIRS = ("reactive", "cli", "master_site", "client_site")
READ = re.compile(
    r"(?:os\.environ\.get|os\.environ\[|os\.getenv|env_or_setting|float_setting)\(\s*\"([A-Z][A-Z0-9_]+)\""
)
# Read by code but documented elsewhere than the table: Django's own, and boto3's credential file.
NOT_IN_TABLE = {"DJANGO_SETTINGS_MODULE", "AWS_SHARED_CREDENTIALS_FILE"}


def table_rows(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def variables_read() -> set[str]:
    found = set()
    for directory in CODE_DIRS:
        for path in (ROOT / directory).rglob("*.py"):
            found |= set(READ.findall(path.read_text()))
    return found


def test_every_variable_the_code_reads_is_in_the_configuration_table() -> None:
    rows = table_rows("Configuration")
    read = variables_read()
    assert {"REDIS_URL", "REACTIVE_PREFIX", "DATABASE_URL"} <= read, "the scan finds nothing: fix the pattern"
    missing = sorted(name for name in read - NOT_IN_TABLE if f"`{name}`" not in rows)
    assert not missing, f"README's configuration table lacks {missing}"
    assert "`DATABASE_URL_<CLIENT>`" in rows


def test_every_command_is_in_the_cli_table() -> None:
    rows = table_rows("The `reactive` command")
    group = typer.main.get_command(app)
    context = group.make_context("reactive", ["up"])
    for name in group.list_commands(context):  # type: ignore[attr-defined]
        command = group.get_command(context, name)  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for sub in subcommands:
                assert re.search(rf"`reactive {name} [^`]*\b{sub}\b", rows), (
                    f"`reactive {name} {sub}` undocumented"
                )
        else:
            assert f"`reactive {name}" in rows, f"`reactive {name}` is not in the README's CLI table"


def test_links_between_the_documents_lead_somewhere() -> None:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for document in documents:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to missing {target}"
