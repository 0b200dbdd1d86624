"""hwact's command line. Subcommands live in hwact/commands/<area>.py, each exporting COMMANDS.

User errors (hwact.errors.HwactError) print one line and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import unicodedata

import click

from hwact.errors import HwactError

COMMAND_MODULES = (
    "hwact.commands.core",      # inspect, convert, export-onnx, bench, demo
    "hwact.commands.finetune",  # finetune (accuracy recovery)
    "hwact.commands.logic",     # train-logic
    "hwact.commands.delta",     # train-delta
)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HwactError as exc:
            if _debug(ctx):
                raise
            click.echo(f"hwact: error: {one_line(str(exc))}", err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("hwact: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug in hwact, not the user's fault
            if _debug(ctx):
                raise
            text = str(exc).strip().splitlines()
            click.echo(f"hwact: internal error: {type(exc).__name__}: {one_line(text[0]) if text else ''} "
                       "(rerun with --debug for the traceback and report it)", err=True)
            sys.exit(1)


def one_line(text: str) -> str:
    """`text` with control characters (a newline in a path, a terminal escape) written as Python escapes
    (\\n, \\x1b), so that an error stays one line and prints nothing but text."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in text)


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get("HWACT_DEBUG") == "1"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="hwact")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """hwact: trace PyTorch models, rewrite them for hardware, export and benchmark them."""
    ctx.obj = {"debug": debug}


for _module in COMMAND_MODULES:
    for _command in importlib.import_module(_module).COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
