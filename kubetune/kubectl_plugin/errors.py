"""The plugin's exceptions; ``main`` turns each into a one-line message and an exit code."""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2


class PluginError(Exception):
    """Something the user can act on: printed as one line, exit code 1."""

    exit_code = EXIT_FAILURE


class UsageError(PluginError):
    """Bad arguments (exit code 2, like argparse and kubectl)."""

    exit_code = EXIT_USAGE


class KubectlMissing(PluginError):
    """No kubectl binary to run."""


class KubectlFailed(PluginError):
    """kubectl exited non-zero; the message is its error line."""


class NotFound(KubectlFailed):
    """The API server answered NotFound."""
