"""hwact's command line. Subcommands live in hwact/commands/<area>.py, each exporting COMMANDS.

User errors (hwact.errors.HwactError, and OSErrors the machine or a chosen path causes: hwact.outputs.os_error)
print one line and exit 2; `--debug` shows the traceback. Ctrl-C exits 130, SIGTERM 143 (both after the
temporary outputs are removed), a closed stdout pipe 141 without a word.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import unicodedata

import click

from hwact import heap
from hwact.errors import HwactError
from hwact.outputs import os_error

# torch's OpenMP threads sleep when they wait, instead of spinning for the CPU (read once, when torch loads;
# a user's own setting wins). Spinning threads fight any other job on the cores: calibrate of zoo:vit-s16
# (measured once, by hand) took 65 s with torch's 2 threads on the 2-core machine under a load of 2.6,
# 5.7 s with this, 5.3 s on one thread.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

COMMAND_MODULES = (
    "hwact.commands.core",      # inspect, convert, export-onnx, bench, demo
    "hwact.commands.finetune",  # finetune (accuracy recovery)
    "hwact.commands.logic",     # train-logic
    "hwact.commands.delta",     # train-delta
)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so that cleanups (temporary outputs) run."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a second SIGTERM ends the process at once
    raise Terminated()


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
        try:
            try:
                result = super().invoke(ctx)
                sys.stdout.flush()   # a reader that went away shows here, where it can still be handled
                return result
            except BrokenPipeError:
                raise
            except OSError as exc:   # a full disk, a read-only folder, ...: the user's to fix
                mapped = os_error(exc)
                if mapped is None:
                    raise
                raise mapped from exc
        except HwactError as exc:
            if _debug(ctx):
                raise
            click.echo(f"hwact: error: {one_line(str(exc))}", err=True)
            sys.exit(2)
        except click.UsageError as exc:   # a bad option value: one line too, like every other user error
            command = exc.ctx.command_path if exc.ctx else "hwact"
            click.echo(f"hwact: error: {one_line(exc.format_message())} (hint: see `{command} --help`)", err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("hwact: interrupted", err=True)
            sys.exit(130)
        except Terminated:
            click.echo("hwact: terminated (SIGTERM)", err=True)
            sys.exit(143)
        except BrokenPipeError:   # `hwact inspect ... | head -1`: end quietly, as other Unix tools do
            _silence_stdout()
            sys.exit(141)
        except Exception as exc:  # a bug in hwact, not the user's fault
            if _debug(ctx):
                raise
            text = str(exc).strip().splitlines()
            click.echo(f"hwact: internal error: {type(exc).__name__}: {one_line(text[0]) if text else ''} "
                       "(rerun with --debug for the traceback and report it)", err=True)
            sys.exit(1)
        finally:
            if main_thread and previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    """stdout's reader is gone: point it at /dev/null so that the flush at exit has nothing to fail on."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


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
    heap.keep_freed_memory()


for _module in COMMAND_MODULES:
    for _command in importlib.import_module(_module).COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
