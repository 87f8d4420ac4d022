"""docs/cli.md names every long option of every subcommand, so the reference cannot fall behind the parser."""

import argparse
from pathlib import Path

from pyro_dirichlet.app.cli import build_parser

CLI_PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_every_long_option_is_named_on_the_cli_page():
    text = CLI_PAGE.read_text()
    (subcommands,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    missing = {
        f"{name} {option}"
        for name, parser in subcommands.choices.items()
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and not option.startswith("--no-") and option != "--help"
        and f"`{option}" not in text and f" {option}" not in text
    }
    assert not missing, f"docs/cli.md does not name: {sorted(missing)}"
