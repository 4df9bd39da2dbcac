"""The ``jsemi`` command line: one module per subcommand.

    jsemi train --model small_cnn --dataset fashion_mnist --mode pgd --preset cpu --out runs/robust
    jsemi eval  --run runs/robust --attack pgd --eps 0.1 --steps 20 --test-subset 2000
    jsemi estimate ... / jsemi linear ... / jsemi alg1 ...   (see ``jsemi <cmd> --help``)

Errors in the input or the environment (unknown model or dataset, bad eps or batch size,
corrupt checkpoint, mismatched or locked run directory, unwritable output, full disk)
print a few lines naming the problem and the fix and exit with 2; anything unexpected
exits with 1 in one line.  ``jsemi --debug CMD ...`` shows full tracebacks instead.
``jsemi --version`` prints the version.  Library modules never import from here.
On a CPU-only host the process compiles with LLVM -O1 unless ``XLA_FLAGS`` sets a level
(``jsemi.cli._xla``: half the compile time, the same run time).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from jsemi.cli import alg1, demo, estimate, evaluate, linear, reproduce, s1, study, sweep, table_s5, train
from jsemi.cli._common import EXIT_USAGE
from jsemi.cli._xla import apply_cpu_compile_level

# subcommand modules, in the order ``jsemi --help`` lists them; each has add_parser(sub)
SUBCOMMANDS = (train, evaluate, estimate, linear, alg1, demo, reproduce, sweep, s1, table_s5, study)


def version() -> str:
    """The installed distribution's version (importlib.metadata), else ``jsemi.__version__``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("jsemi")
    except PackageNotFoundError:
        from jsemi import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jsemi", description="Semirobust subnetworks in JAX/Flax")
    parser.add_argument("--version", action="version", version=f"jsemi {version()}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for p in {id(p): p for p in sub.choices.values()}.values():  # `jsemi CMD ... --debug` works too
        if "--debug" not in p._option_string_actions:
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jsemi`` console script; returns the exit status.

    0: success; 2: a problem with the input or the environment that the user can fix (bad
    argument, unknown name, bad data, run directory locked / mismatched / not writable, corrupt
    checkpoint, full disk), printed as a few lines naming it and the fix; 1: an unexpected
    error (one line; ``--debug`` shows the traceback); 130: interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) and usage errors (2) as the return value
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    debug = bool(getattr(args, "debug", False))
    apply_cpu_compile_level()  # LLVM -O1 on CPU-only hosts unless XLA_FLAGS sets a level (jsemi.cli._xla)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning(args.cmd, warnings.showwarning)
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print(f"jsemi {args.cmd}: interrupted; finished work is saved, rerun the same command to resume",
                  file=sys.stderr)
            return 130
        except BrokenPipeError:  # e.g. `jsemi reproduce --list | head`: the reader left, nothing is wrong
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        except Exception as e:  # every error becomes a short message unless --debug
            if debug:
                raise
            code, msg = describe_error(e)
            print(f"jsemi {args.cmd}: error: {msg}", file=sys.stderr)
            return code


def _show_warning(cmd: str, default):
    """Warnings raised by jsemi itself print as one line "jsemi CMD: warning: ..."."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def show(message, category, filename, lineno, file=None, line=None):
        if os.path.abspath(filename).startswith(root + os.sep):
            print(f"jsemi {cmd}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


MAX_LINES = 4


def describe_error(e: BaseException) -> tuple[int, str]:
    """(exit status, message of at most a few lines) for an exception raised by a subcommand."""
    import errno

    from jsemi.checkpoint import CheckpointError, is_disk_full
    from jsemi.runs import RunLockedError

    if is_disk_full(e):
        text = str(e) if isinstance(e, OSError) and "rerun" in str(e) else (
            f"no space left on device ({_first_line(e)}); free some space and rerun the same command to resume "
            "(finished work is saved)")
        return EXIT_USAGE, text
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.errno in (
            errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return EXIT_USAGE, f"{e.strerror}: {e.filename}" if e.filename else _first_line(e)
    if isinstance(e, (ValueError, TypeError, CheckpointError, FileNotFoundError, RunLockedError)):
        lines = str(e).strip().splitlines() or [type(e).__name__]
        if len(lines) > MAX_LINES or any(len(line) > 600 for line in lines):
            lines = [line[:600] for line in lines[:MAX_LINES]] + ["(rerun with --debug for the full error)"]
        return EXIT_USAGE, "\n".join(lines)
    return 1, f"unexpected {type(e).__name__}: {_first_line(e)} (rerun with --debug for the traceback)"


def _first_line(e: BaseException, limit: int = 300) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return first if len(first) <= limit else first[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
