"""The configuration reference (docs/configuration.md), rendered from the CLI itself.

``make docs`` writes it; a test fails when the committed file and the CLI disagree, so
the reference can never drift from the code. Must not: import anything but the CLI.
"""

from __future__ import annotations

import click

from serfbridge import config_rules
from serfbridge.cli import cli
from serfbridge.config import DEFAULT_CONFIG, ENV_NAMES

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


def _rules() -> list[str]:
    """What each setting accepts: checked at start, whichever layer the value came from."""
    lines = [
        "## What each setting accepts",
        "",
        "Every command checks every setting before it starts, whether the value came from a",
        "flag, the environment or the config file; a bad one ends it with exit 2 and one line",
        "naming the setting (which systemd's `RestartPreventExitStatus=2` does not restart).",
        "Messages never repeat a text value. The config file is read up to 64 KiB; each",
        "line is `KEY=value`, `#` starts a comment, values may be quoted as in a shell.",
        "",
        "| setting | environment | accepts |",
        "|---|---|---|",
    ]
    for name, rule in config_rules.RULE_TEXT.items():
        env = ENV_NAMES.get(name, "")
        lines.append(f"| `{config_rules.flag_name(name)}` | `{env}` | {rule} |")
    return [*lines, ""]


def render() -> str:
    lines = [HEADER, *_rules(), *_section("Global options (`serfbridge ...`)", cli)]
    for name, command in sorted(cli.commands.items()):
        if isinstance(command, click.Group):
            for sub_name, sub in sorted(command.commands.items()):
                lines += _section(f"`serfbridge {name} {sub_name}`", sub)
        else:
            lines += _section(f"`serfbridge {name}`", command)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
