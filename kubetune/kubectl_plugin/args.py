"""Command-line arguments: the subcommands and kubectl's global flags, accepted before or after them.

kubectl refuses flags before a plugin's name (``kubectl --context x kubetune`` is an error), so users
write ``kubectl kubetune --context x get`` or ``kubectl kubetune get --context x``; both work here.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import NoReturn

from kubetune.kubectl_plugin.errors import EXIT_USAGE

PROG = "kubectl kubetune"
FTJ_ALIASES = frozenset({"ftj", "finetunejob", "finetunejobs"})
ADEP_ALIASES = frozenset({"adep", "adapterdeployment", "adapterdeployments"})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class GlobalFlags:
    """kubectl's connection flags, passed through to every kubectl call unchanged."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False
    request_timeout: str | None = None

    def kubectl_args(self) -> list[str]:
        """The flags for a kubectl call on named objects (``-A`` only goes to list reads)."""
        pairs = (
            ("--kubeconfig", self.kubeconfig),
            ("--context", self.context),
            ("--namespace", self.namespace),
            ("--request-timeout", self.request_timeout),
        )
        return [f"{flag}={value}" for flag, value in pairs if value is not None]


def duration_seconds(text: str) -> float:
    """``2``, ``2s``, ``500ms``, ``5m``, ``1h`` -> seconds (an argparse type)."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 2s, 500ms, 5m, 1h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the help to read, exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USAGE)


def _global_flags(default: object) -> _Parser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("kubectl flags")
    group.add_argument("--kubeconfig", default=default, help="Path to the kubeconfig file.")
    group.add_argument("--context", default=default, help="The kubeconfig context to use.")
    group.add_argument("-n", "--namespace", default=default, help="The namespace (default: the context's).")
    group.add_argument(
        "-A", "--all-namespaces", action="store_true", default=default, help="get: list in every namespace."
    )
    group.add_argument(
        "--request-timeout", default=default, help="Passed to kubectl (e.g. 10s); 0 waits forever."
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    # Subparsers suppress defaults so a flag given before the subcommand is not reset by its absence after.
    top_flags, sub_flags = _global_flags(None), _global_flags(argparse.SUPPRESS)
    parser = _Parser(
        prog=PROG,
        parents=[top_flags],
        description="Day-2 operations on kubetune FineTuneJobs (ftj) and AdapterDeployments (adep).",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[sub_flags], help=help_, description=help_)

    get = add("get", "Table of FineTuneJobs and/or AdapterDeployments with progress and accuracy.")
    get.usage = f"{PROG} get [ftj|adep] [NAME] [flags]"
    get.add_argument("what", nargs="*", metavar="KIND/NAME", help="ftj or adep and/or a name (default: both)")

    watch = add("watch", "Print a line per change of phase/progress/loss until the FineTuneJob finishes.")
    watch.add_argument("name", metavar="NAME")
    watch.add_argument("--interval", type=duration_seconds, default=2.0, help="Poll interval (default 2s).")
    watch.add_argument(
        "--timeout", type=duration_seconds, default=0.0, help="Give up after this long (default: never)."
    )

    logs = add("logs", "Logs of the newest training pod (the validation pod before training starts).")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="Stream new lines.")
    logs.add_argument("--tail", type=int, default=None, metavar="N", help="Only the last N lines.")
    logs.add_argument("--raw", action="store_true", help="Print the JSON events as they are.")

    for name, verb in (("suspend", "Suspend"), ("resume", "Resume")):
        add(name, f"{verb} a FineTuneJob (sets spec.suspend).").add_argument("name", metavar="NAME")

    promote = add("promote", "Pin an AdapterDeployment to a version from status.history.")
    promote.add_argument("name", metavar="ADEP")
    which = promote.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="The version to serve.")
    which.add_argument("--clear", action="store_true", help="Remove the pin (follow the adapter source).")

    rollback = add("rollback", "Pin an AdapterDeployment to the version before the active one.")
    rollback.add_argument("name", metavar="ADEP")
    rollback.add_argument("--version", help="A version from status.history (default: the previous one).")

    explain = add("explain-failure", "Why a FineTuneJob failed: conditions, events, termination message.")
    explain.add_argument("name", metavar="NAME")

    from kubetune.kubectl_plugin.review import add_parser as add_review

    add_review(add)
    return parser


def global_flags(args: argparse.Namespace) -> GlobalFlags:
    return GlobalFlags(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        all_namespaces=bool(args.all_namespaces),
        request_timeout=args.request_timeout,
    )
