"""Entry point of the ``kubectl-kubetune`` console script: parse, dispatch, turn errors into exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from kubetune.kubectl_plugin import commands, review
from kubetune.kubectl_plugin.args import PROG, build_parser, global_flags
from kubetune.kubectl_plugin.errors import PluginError, UsageError
from kubetune.kubectl_plugin.kubectl import Kubectl, find_kubectl

Command = Callable[[argparse.Namespace, Kubectl], int]
COMMANDS: dict[str, Command] = {
    "get": commands.cmd_get,
    "watch": commands.cmd_watch,
    "logs": commands.cmd_logs,
    "suspend": commands.cmd_suspend,
    "resume": commands.cmd_resume,
    "promote": commands.cmd_promote,
    "rollback": commands.cmd_rollback,
    "explain-failure": commands.cmd_explain_failure,
    "review": review.cmd_review,
}
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        flags = global_flags(args)
        if flags.all_namespaces and args.command != "get":
            raise UsageError(f"-A/--all-namespaces applies only to get, not {args.command}")
        if args.command == "watch" and args.interval <= 0:
            raise UsageError("--interval must be more than 0")
        if args.command == "review" and args.limit < 1:
            raise UsageError("--limit must be at least 1")
        if args.command == "review" and review.without_cluster(args):
            return review.cmd_review(args, None)  # a server URL and a token: no cluster to ask
        return COMMANDS[args.command](args, Kubectl(find_kubectl(), flags))
    except PluginError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `kubectl kubetune logs x | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
