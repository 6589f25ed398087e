"""The line a kubetune container in front of an engine logs whenever the adapter versions it serves
change, and its parser: how the operator learns which version a `runtime.engine: vllm` pod serves.

With an engine, a new adapter version reaches running pods through their ServeConfig ConfigMap (the
kubelet refreshes the mounted file in place; engine_sync.py loads the version and flips the alias),
not through the pod template, so the Deployment's rollout status cannot say which version a pod
serves. Serving pods hold no API token; like the trainer's progress, the fact reaches the operator
through the pod log, which it may read (`pods/log`). The line is logged once per change (and when the
pod first becomes ready), so the newest one in the log's tail is what the pod serves now.

A version the engine could not load is named in the same line with why (``failed``), so the operator
can say why an in-place load stalls; the reason is clipped (URL credentials and query strings cut,
at most ``ERROR_CHARS``), on writing and again on reading, since a pod's log is not to be trusted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

MARKER = "kubetune-serving "
ERROR_CHARS = 200
# userinfo (scheme://user:secret@host) and query strings (presigned URLs) are cut from a reason.
_URL_SECRETS = re.compile(r"(?<=://)[^/\s@]+@|\?\S+")


def clip_error(text: str) -> str:
    """A load failure's reason as it may be quoted: one line, no URL credentials or query strings,
    at most ERROR_CHARS characters.

    >>> clip_error("load t@v2 from https://u:pw@h/a?X-Amz-Signature=s failed:\\n  no such file")
    'load t@v2 from https://h/a failed: no such file'
    """
    text = " ".join(_URL_SECRETS.sub("", str(text)).split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def serving_line(aliases: Mapping[str, str], failed: Mapping[str, str] | None = None) -> str:
    """The log line for ``aliases`` (bare name -> ``name@version`` that requests to it reach) and
    ``failed`` (``name@version`` -> why the engine could not load it; left out when none).

    >>> serving_line({"triage": "triage@v2"})
    'kubetune-serving {"aliases":{"triage":"triage@v2"}}'
    >>> serving_line({"triage": "triage@v2"}, {"triage@v3": "HTTP 400: bad rank"})
    'kubetune-serving {"aliases":{"triage":"triage@v2"},"failed":{"triage@v3":"HTTP 400: bad rank"}}'
    """
    report: dict[str, dict[str, str]] = {"aliases": dict(sorted(aliases.items()))}
    if failed:
        report["failed"] = {k: clip_error(v) for k, v in sorted(failed.items())}
    return MARKER + json.dumps(report, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ServedReport:
    """What one serving line says: the aliases, and the versions that failed to load, with why."""

    aliases: dict[str, str]
    failed: dict[str, str] = field(default_factory=dict)


def last_report(log: str) -> ServedReport | None:
    """The newest serving line in ``log`` (None when it has none, or only a damaged one).

    >>> last_report("x " + serving_line({"t": "t@v1"}, {"t@v2": "HTTP 400"}))
    ServedReport(aliases={'t': 't@v1'}, failed={'t@v2': 'HTTP 400'})
    """
    for line in reversed(log.splitlines()):
        at = line.find(MARKER)
        if at < 0:
            continue
        try:
            report = json.loads(line[at + len(MARKER) :])
            aliases, failed = report["aliases"], report.get("failed", {})
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if not isinstance(aliases, dict) or not isinstance(failed, dict):
            return None
        return ServedReport(
            {str(k): str(v) for k, v in aliases.items()},
            {str(k)[:ERROR_CHARS]: clip_error(str(v)) for k, v in failed.items()},
        )
    return None


def last_served(log: str) -> dict[str, str] | None:
    """The aliases of the newest serving line in ``log`` (None when it has none, or only a damaged
    one: a pod that has not said what it serves serves nothing we know of).

    >>> log = "x INFO a: " + serving_line({"t": "t@v1"}) + "\\ny INFO a: " + serving_line({"t": "t@v2"})
    >>> last_served(log), last_served("no such line")
    ({'t': 't@v2'}, None)
    """
    report = last_report(log)
    return None if report is None else report.aliases
