"""``gfbench``: the entry point. Parses the arguments, runs one command, and turns
every way it can end into an exit code and at most one line on stderr.

Exit 2 covers the environment too: a file that cannot be written (a full
disk, a read-only directory) is one line, never a traceback, and never the 1
that means failed runs or a regression; an interrupt (Ctrl-C, SIGTERM) ends
with 130 and says what it left behind.
"""
from __future__ import annotations

import signal
import sys

from cli.commands import cmd_compare, cmd_leaderboard, cmd_list, cmd_prune, cmd_report
from cli.output import describe_os_error
from cli.parser import EXIT_BAD_INPUT, build_parser
from cli.run import cmd_run
from execution.grid import BadInput

COMMANDS = {"run": cmd_run, "list": cmd_list, "report": cmd_report,
            "leaderboard": cmd_leaderboard, "compare": cmd_compare, "prune": cmd_prune}


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


#: what an interrupted command leaves behind, in its final line
INTERRUPTED = {"run": "finished runs are kept, rerun to resume",
               "report": "the previous report, if any, is left as it was"}


def main(argv: list[str] | None = None) -> int:
    """Run one ``gfbench`` command; returns the exit code.

    Exit 2 covers the environment too: a file that cannot be written (a full
    disk, a read-only directory) is one line, never a traceback, and never
    the 1 that means failed runs or a regression.
    """
    command = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_BAD_INPUT
        return COMMANDS[args.command](args)
    except BadInput as exc:
        print(f"gfbench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # StoreError included
        print(f"gfbench: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"gfbench: interrupted; {INTERRUPTED.get(command, 'nothing was half-written')}",
              file=sys.stderr)
        return 130


def console_main() -> None:
    """Entry point of the ``gfbench`` console script.

    SIGTERM (a scheduler's stop, ``kill``) ends like Ctrl-C: clean-up runs,
    finished runs are kept, and the message says how to resume. SIGINT
    interrupts even where it was inherited ignored (a background job of a
    script): a ``kill -INT`` is never swallowed.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())


if __name__ == "__main__":
    console_main()
