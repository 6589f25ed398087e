"""Fetching with the location rules re-checked at the last moment: every URI again against its
``kubetune.api.uris`` table, every host's resolved addresses, every redirect hop, and the S3 endpoint
a Secret may set. A ConfigMap edited by hand or a DNS name that resolves to 169.254.169.254, a private
range (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) or loopback is caught here even though
admission passed; the chart's allowedHosts (``KUBETUNE_ALLOWED_HOSTS``, set by the operator) lets named
private hosts through, never metadata or link-local ones."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from kubetune.api.rules import Rule
from kubetune.api.uris import (
    UnsafeUriError,
    address_problem,
    allowed_hosts_from,
    check_redirect,
    check_uri,
    host_problem,
    is_allowed,
)

if TYPE_CHECKING:
    import httpx

MAX_REDIRECTS = 5


def allowed_hosts() -> tuple[str, ...]:
    """The operator's allow-list for this pod (empty: nothing private is reachable)."""
    return allowed_hosts_from(os.environ)


def check_resolved(url: str, what: str, allow_loopback: bool = False, allow_private: bool = False) -> None:
    """UnsafeUriError when the URL's host is, or resolves to, an address a fetch must not reach. A
    name on the allow-list may resolve to a private address; an address is judged on its own."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    allowed = allowed_hosts()
    problem = host_problem(host, allow_loopback, allow_private, allowed)
    if problem is None:
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError:
            return  # unresolvable: the fetch itself fails with its own error
        private_ok = allow_private or is_allowed(host, allowed)
        problem = next(
            (
                p
                for info in infos
                if (p := address_problem(str(info[4][0]), allow_loopback, private_ok, allowed))
            ),
            None,
        )
    if problem is not None:
        raise UnsafeUriError(f"{what} {url[:200]!r}: host {host!r} {problem}")


def s3_endpoint(what: str) -> str | None:
    """AWS_ENDPOINT_URL (set from the user's Secret), refused when it points at link-local/metadata.

    Loopback and private addresses stay allowed: a MinIO next to ``kubetune train`` on a laptop, or as
    a Service of the cluster, is a normal setup, and the endpoint comes from the user's own Secret.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint is not None:
        where = f"{what} (AWS_ENDPOINT_URL)"
        check_redirect(endpoint, where, allow_http=True, allow_loopback=True, allow_private=True)
        check_resolved(endpoint, where, allow_loopback=True, allow_private=True)
    return endpoint


def https_get(
    uri: str,
    rules: Sequence[Rule],
    what: str,
    headers: dict[str, str],
    timeout: float,
    transport: httpx.BaseTransport | None = None,
) -> bytes:
    """GET an https URI, following at most MAX_REDIRECTS redirects, each to https and a safe host;
    the Authorization header is dropped once a redirect leaves the original host."""
    import httpx

    url = check_uri(uri, rules, what, allowed=allowed_hosts())
    with httpx.Client(follow_redirects=False, timeout=timeout, transport=transport) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_resolved(url, what)
            response = client.get(url, headers=headers)
            if not response.is_redirect:
                response.raise_for_status()
                return response.content
            location = urljoin(url, response.headers.get("location", ""))
            url = check_redirect(location, what, allow_http=False, allowed=allowed_hosts())
            if urlsplit(url).netloc != urlsplit(uri).netloc:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    raise UnsafeUriError(f"{what} {uri[:200]!r}: more than {MAX_REDIRECTS} redirects")
