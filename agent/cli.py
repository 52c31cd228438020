"""`nodewarden` command line: one module per subcommand under agent/commands/.

Exit codes scripts can trust: 0 success; 1 the command ran and found a problem (e.g.
`check` found errors, a remediation failed or was denied); 2 usage or configuration error;
3 runtime failure (a device or file could not be read).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3

#: subcommand modules in agent/commands/, in the order --help lists them
COMMANDS = (
    "run", "check", "scan", "sample", "status", "remediate", "maintenance", "approve",
    "simulate",
)


class CommandModule(Protocol):
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


def build_parser(only: str | None = None
                 ) -> tuple[argparse.ArgumentParser, dict[str, CommandModule]]:
    """The parser and the command modules it registered: every command, or only `only`
    when it names one (a command's own parsing, help and errors are the same either way:
    the others' modules, ~0.2 s of imports, are then never loaded)."""
    parser = argparse.ArgumentParser(
        prog="nodewarden",
        description=(
            "Health agent with guarded remediation for mail and storage hosts. "
            "It watches the kernel log, mail logs, metrics, block devices and service "
            "probes, recognises known failure signatures, and runs remediations only when "
            "every guard allows (the shipped mode is dry-run: nothing is executed)."
        ),
        epilog=(
            "Exit codes: 0 ok; 1 problem found / action denied or failed; "
            "2 usage or configuration error; 3 runtime failure. "
            "Configuration: /etc/nodewarden/agent.toml, --config or NODEWARDEN_CONFIG "
            "(docs/configuration.md)."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, CommandModule] = {}
    for name in (only,) if only in COMMANDS else COMMANDS:
        try:
            module: CommandModule = importlib.import_module(
                f"agent.commands.{name}"
            )
        except ModuleNotFoundError as exc:
            if exc.name != f"agent.commands.{name}":
                raise
            continue  # not built yet
        # argparse %-formats `help` (not `description`): a bare "%" in HELP must survive
        p = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP)
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `nodewarden scan ...`: only scan's module is imported; anything else (--help, no
    # command, a misspelt one) gets the parser of every command
    parser, modules = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return modules[args.command].main(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK  # `nodewarden scan | head`: the reader went away, not an error


if __name__ == "__main__":
    sys.exit(main())
