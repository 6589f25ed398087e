"""Fetching with the location rules re-checked at the last moment: every URI again against its
``kubetune.api.uris`` table, every host's resolved addresses, every redirect hop, and the S3 endpoint
a Secret may set. A ConfigMap edited by hand or a DNS name that resolves to 169.254.169.254 is caught
here even though admission passed."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from kubetune.api.rules import Rule
from kubetune.api.uris import UnsafeUriError, address_problem, check_redirect, check_uri, host_problem

if TYPE_CHECKING:
    import httpx

MAX_REDIRECTS = 5


def check_resolved(url: str, what: str, allow_loopback: bool = False) -> None:
    """UnsafeUriError when the URL's host is, or resolves to, an address a fetch must not reach."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    problem = host_problem(host, allow_loopback)
    if problem is None:
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError:
            return  # unresolvable: the fetch itself fails with its own error
        problem = next((p for info in infos if (p := address_problem(str(info[4][0]), allow_loopback))), None)
    if problem is not None:
        raise UnsafeUriError(f"{what} {url[:200]!r}: host {host!r} {problem}")


def s3_endpoint(what: str) -> str | None:
    """AWS_ENDPOINT_URL (set from the user's Secret), refused when it points at link-local/metadata.

    Loopback stays allowed: a MinIO next to ``kubetune train`` on a laptop is a normal setup.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint is not None:
        check_redirect(endpoint, f"{what} (AWS_ENDPOINT_URL)", allow_http=True, allow_loopback=True)
        check_resolved(endpoint, f"{what} (AWS_ENDPOINT_URL)", allow_loopback=True)
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

    url = check_uri(uri, rules, what)
    with httpx.Client(follow_redirects=False, timeout=timeout, transport=transport) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_resolved(url, what)
            response = client.get(url, headers=headers)
            if not response.is_redirect:
                response.raise_for_status()
                return response.content
            url = check_redirect(urljoin(url, response.headers.get("location", "")), what, allow_http=False)
            if urlsplit(url).netloc != urlsplit(uri).netloc:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    raise UnsafeUriError(f"{what} {uri[:200]!r}: more than {MAX_REDIRECTS} redirects")
