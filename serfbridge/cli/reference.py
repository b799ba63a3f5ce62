"""The configuration reference (docs/configuration.md), rendered from the CLI itself.

``make docs`` writes it; a test fails when the committed file and the CLI disagree, so
the reference can never drift from the code. Must not: import anything but the CLI.
"""

from __future__ import annotations

import click

from serfbridge.cli import cli
from serfbridge.config import DEFAULT_CONFIG

HEADER = f"""# Configuration reference

Generated from the CLI by `make docs` (`python -m serfbridge.cli.reference`); a test checks
it against the code. Every setting can be given as a flag, as an environment variable, or
in the env-style config file (`{DEFAULT_CONFIG}`, or `--config`/`SERFBRIDGE_CONFIG`),
as `ENV_NAME=value` lines; precedence is flags, then environment, then the file. Global
options go before the command: `serfbridge --cluster-name lab run --resync 30`.
"""


def _rows(command: click.Command) -> list[str]:
    rows = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        flags = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        env = param.envvar if isinstance(param.envvar, str) else ""
        text = " ".join((param.help or "").split()).replace("|", "\\|")
        rows.append(f"| {flags} | {f'`{env}`' if env else ''} | {text} |")
    return rows


def _section(title: str, command: click.Command) -> list[str]:
    summary = " ".join((command.help or "").split("\n\n")[0].split())
    rows = _rows(command)
    lines = [f"## {title}", "", summary, ""]
    if rows:
        lines += ["| option | environment | meaning |", "|---|---|---|", *rows, ""]
    return lines


def render() -> str:
    lines = [HEADER, *_section("Global options (`serfbridge ...`)", cli)]
    for name, command in sorted(cli.commands.items()):
        if isinstance(command, click.Group):
            for sub_name, sub in sorted(command.commands.items()):
                lines += _section(f"`serfbridge {name} {sub_name}`", sub)
        else:
            lines += _section(f"`serfbridge {name}`", command)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
