"""``kubectl kubetune review ADEP``: the AdapterDeployment's review queue in the terminal.

The same list the labelling page shows (GET /admin/review/queue on the server), in the same order.
The admin token comes from ``$KUBETUNE_ADMIN_TOKEN`` or the Secret named by
``spec.adminTokenSecretRef``; the server is reached through ``kubectl port-forward service/ADEP``
unless ``--url`` names it (e.g. an existing port-forward or an ingress). With ``--url`` and
``$KUBETUNE_ADMIN_TOKEN`` no cluster is asked anything (no kubectl needed): ADEP, if given, names the
adapter whose queue to show, else the server shows its first.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubetune.kubectl_plugin.errors import KubectlFailed, PluginError, UsageError
from kubetune.kubectl_plugin.kubectl import ADEP, Kubectl

TOKEN_ENV = "KUBETUNE_ADMIN_TOKEN"
FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")
TEXT_WIDTH = 60


class ReviewUnavailable(PluginError):
    """The server did not answer the review request (down, no token, review off)."""


def admin_token(kubectl: Kubectl, adep: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV]
    ref = (adep.get("spec") or {}).get("adminTokenSecretRef")
    name = adep["metadata"]["name"]
    if not ref:
        raise UsageError(f"adapterdeployment {name} has no spec.adminTokenSecretRef; set {TOKEN_ENV}")
    secret = kubectl.get("secret", ref["name"])
    value = (secret.get("data") or {}).get(ref["key"])
    if value is None:
        raise UsageError(f"secret {ref['name']} has no key {ref['key']!r} (spec.adminTokenSecretRef)")
    return base64.b64decode(value).decode().strip()


@contextmanager
def port_forward(kubectl: Kubectl, service: str) -> Iterator[str]:
    """``kubectl port-forward service/NAME :80`` for the block's duration; yields the local URL."""
    proc = kubectl.start("port-forward", f"service/{service}", ":80")
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = FORWARDING.search(line)
            if found:
                yield f"http://127.0.0.1:{found.group(1)}"
                return
        error = proc.stderr.read() if proc.stderr else ""
        raise KubectlFailed(f"kubectl port-forward service/{service} ended: {error.strip() or 'no output'}")
    finally:
        proc.terminate()
        proc.wait(10)


def without_cluster(args: argparse.Namespace, environ: dict[str, str] | None = None) -> bool:
    """--url and $KUBETUNE_ADMIN_TOKEN say all there is to know: no kubectl, no kubeconfig."""
    env = os.environ if environ is None else environ
    return bool(args.url and env.get(TOKEN_ENV))


def fetch_queue(url: str, token: str, model: str | None, limit: int, order: str) -> dict[str, Any]:
    wanted = {"model": model, "limit": limit, "order": order}
    query = urllib.parse.urlencode({k: v for k, v in wanted.items() if v is not None})
    request = urllib.request.Request(
        f"{url.rstrip('/')}/admin/review/queue?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = err.reason
        raise ReviewUnavailable(f"{url}: HTTP {err.code}: {message}") from None
    except OSError as err:
        raise ReviewUnavailable(f"{url}: {err}") from None


def render_queue(body: dict[str, Any], width: int = TEXT_WIDTH) -> str:
    """The queue as a table: rank, margin, novelty, the top-2 guesses, the text (wrapped)."""
    items = body.get("data") or []
    header = f"{body.get('model')}: {body.get('waiting', len(items))} waiting (order: {body.get('order')})"
    if not items:
        return header + "\nnothing to review"
    lines = [header, f"{'#':>3}  {'MARGIN':>6}  {'NOVELTY':>7}  {'GUESSES':<44}  TEXT"]
    for rank, item in enumerate(items, 1):
        guesses = " vs ".join(f"{g['label']} {round(100 * g['probability'])}%" for g in item["guesses"])
        novelty = "-" if item.get("novelty") is None else f"{item['novelty']:.3f}"
        wrapped = textwrap.wrap(" ".join(item["text"].split()), width) or [""]
        lines.append(f"{rank:>3}  {item['margin']:>6.3f}  {novelty:>7}  {guesses:<44}  {wrapped[0]}")
        lines += [f"{'':>3}  {'':>6}  {'':>7}  {'':<44}  {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def cmd_review(args: argparse.Namespace, kubectl: Kubectl | None) -> int:
    """`kubectl` is None where without_cluster(args): the server at --url is asked directly."""
    if kubectl is None:
        body = fetch_queue(args.url, os.environ[TOKEN_ENV], args.name, args.limit, args.order)
        print(json.dumps(body, indent=2) if args.output == "json" else render_queue(body))
        return 0
    if args.name is None:
        raise UsageError(f"ADEP is required, unless --url and ${TOKEN_ENV} are both given")
    adep = kubectl.get(ADEP, args.name)
    token = admin_token(kubectl, adep)
    if args.url:
        body = fetch_queue(args.url, token, args.name, args.limit, args.order)
    else:
        with port_forward(kubectl, args.name) as url:
            body = fetch_queue(url, token, args.name, args.limit, args.order)
    print(json.dumps(body, indent=2) if args.output == "json" else render_queue(body))
    return 0


def add_parser(add: Any) -> None:
    """The `review` subcommand (``add`` is args.build_parser's helper)."""
    review = add("review", "The review queue of an AdapterDeployment: uncertain/novel inputs to label.")
    review.add_argument(
        "name", metavar="ADEP", nargs="?", help="The AdapterDeployment (with --url: the adapter's queue)."
    )
    review.add_argument("--limit", type=int, default=20, help="How many items (default 20).")
    review.add_argument("--order", choices=["entropy", "diverse", "uncertainty"], default="entropy")
    review.add_argument("--url", help="The server's base URL (default: kubectl port-forward service/ADEP).")
    review.add_argument("-o", "--output", choices=["table", "json"], default="table")
