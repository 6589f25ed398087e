"""Which locations kubetune reads and writes, and which it refuses to touch.

One table of rules per kind of location (dataset, output, base model, adapter, Prometheus URL). The
rules run as CEL at admission and as pydantic validators; ``uri_problem`` runs them again, plus the
address checks a regular expression cannot make (IPv6, mapped IPv4), right before anything is
fetched: in the trainer, the server and the operator, and on every redirect hop. Pure: no DNS here;
``address_problem`` judges an address a fetcher resolved.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from kubetune.api.rules import Rule, first_broken

# A path segment: no spaces, no shell metacharacters. ".." is rejected by its own rule.
_SEG = r"[A-Za-z0-9._@=+-]+"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_HOST = r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
PVC_URI = rf"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/{_SEG})*/?"
S3_URI = rf"s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9](/{_SEG})*/?"
HTTPS_URI = rf"https://{_HOST}(:{_PORT})?(/[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?"
CONFIGMAP_URI = r"configmap://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[-._a-zA-Z0-9]+"
PKG_URI = r"pkg://[A-Za-z0-9][A-Za-z0-9._-]*"
HF_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"
ABS_PATH = rf"(/{_SEG})+/?"
PROMETHEUS_URL = rf"https?://{_HOST}(:{_PORT})?(/[A-Za-z0-9._~%!$&'()*+,;=:@-]+)*/?"

TRAVERSAL = Rule("must not contain '..' path segments (path traversal)", deny=r"(^|/)[.][.](/|$)")

# Hosts a fetch must never reach: the pod itself, link-local (cloud metadata on 169.254.169.254,
# Alibaba's 100.100.100.200) and the metadata DNS names; written for the host shape `_HOST`.
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_AT_HOST = r"(?i)^[a-z0-9]+://({})\.?(:[0-9]*)?([/?#]|$)"
METADATA_NAMES = (
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.com",
    "instance-data",
    "instance-data.ec2.internal",
)
_LOOPBACK = r"localhost|[a-z0-9.-]*\.localhost|127(\.[0-9]+){3}"
_LINK_LOCAL = (
    r"169\.254(\.[0-9]+){2}|100\.100\.100\.200|0(\.[0-9]+){3}|2(2[4-9]|[3-5][0-9])(\.[0-9]+){3}|"
    + "|".join(name.replace(".", r"\.") for name in METADATA_NAMES)
)
NUMERIC_HOST = Rule(
    "must name its host by DNS name or dotted-quad IPv4 address (no integer, octal or hex forms)",
    deny=_AT_HOST.format(r"((0x[0-9a-f]*|[0-9]+)\.?)+"),
    unless=_AT_HOST.format(rf"{_OCTET}(\.{_OCTET}){{3}}"),
)
UNSAFE_HOST_MESSAGE = (
    "must not point at the pod itself or a link-local, cloud-metadata or broadcast address "
    "(localhost, 127.0.0.0/8, 0.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3, 100.100.100.200, "
    "metadata.google.internal)"
)
BLOCKED_HOST = Rule(UNSAFE_HOST_MESSAGE, deny=_AT_HOST.format(f"{_LOOPBACK}|{_LINK_LOCAL}"))
METADATA_HOST_MESSAGE = (
    "must not point at a link-local, cloud-metadata or broadcast address "
    "(0.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3, 100.100.100.200, metadata.google.internal)"
)
METADATA_HOST = Rule(METADATA_HOST_MESSAGE, deny=_AT_HOST.format(_LINK_LOCAL))
S3_BUCKET = Rule(
    "must name an S3 bucket that is not an IP address and has no '..'",
    deny=r"^s3://([0-9]+(\.[0-9]+){3}(/|$)|[^/]*\.\.)",
)
SYSTEM_PATH = Rule(
    "must not be under /etc, /proc, /sys, /dev, /run, /var/run, /boot or /root (system and secret "
    "locations); use a folder of the image or a PVC",
    deny=r"^/+(etc|proc|sys|dev|run|var/+run|boot|root)(/|$)",
)


def _one_of(*shapes: str) -> str:
    return "^(" + "|".join(shapes) + ")$"


def _shape(accepted: str, *shapes: str) -> Rule:
    return Rule(f"must be {accepted}", require=_one_of(*shapes))


DATA_ACCEPTED = "pvc://<claim>/<path>, s3://<bucket>/<key>, https://<host>/<path> or configmap://<name>/<key>"
OUTPUT_ACCEPTED = "pvc://<claim>/<path> or s3://<bucket>/<prefix>"
MODEL_ACCEPTED = (
    "a Hugging Face id (org/name), an absolute path in the image, pkg://<python-distribution> "
    "(model files shipped in a Python package), pvc://<claim>/<path>, s3://<bucket>/<prefix> "
    "or https://<url>"
)
ADAPTER_ACCEPTED = "pvc://<claim>/<path> or s3://<bucket>/<prefix>"
CHAMPION_ACCEPTED = "pvc://<claim>/<path>, s3://<bucket>/<prefix> or an absolute path to an adapter folder"
FRESH_ACCEPTED = "pvc://<claim>/<path> (a folder on a writable PVC)"
PROMETHEUS_ACCEPTED = "http(s)://<host>[:<port>][/<path>] (no credentials, query or fragment)"

_HOST_RULES = (NUMERIC_HOST, BLOCKED_HOST)
DATA_RULES = (
    _shape(DATA_ACCEPTED, PVC_URI, S3_URI, HTTPS_URI, CONFIGMAP_URI),
    TRAVERSAL,
    *_HOST_RULES,
    S3_BUCKET,
)
OUTPUT_RULES = (_shape(OUTPUT_ACCEPTED, PVC_URI, S3_URI), TRAVERSAL, S3_BUCKET)
MODEL_RULES = (
    _shape(MODEL_ACCEPTED, PKG_URI, PVC_URI, S3_URI, HTTPS_URI, ABS_PATH, HF_ID),
    TRAVERSAL,
    *_HOST_RULES,
    S3_BUCKET,
    SYSTEM_PATH,
)
ADAPTER_RULES = (_shape(ADAPTER_ACCEPTED, PVC_URI, S3_URI), TRAVERSAL, S3_BUCKET)
CHAMPION_RULES = (_shape(CHAMPION_ACCEPTED, PVC_URI, S3_URI, ABS_PATH), TRAVERSAL, S3_BUCKET, SYSTEM_PATH)
FRESH_RULES = (_shape(FRESH_ACCEPTED, PVC_URI), TRAVERSAL)
# The operator may run outside the cluster next to a port-forwarded Prometheus: loopback is allowed.
PROMETHEUS_RULES = (
    _shape(PROMETHEUS_ACCEPTED, PROMETHEUS_URL),
    TRAVERSAL,
    NUMERIC_HOST,
    METADATA_HOST,
)


class UnsafeUriError(ValueError):
    """A location kubetune refuses to read or write; the message says which rule it breaks."""


def address_problem(address: str, allow_loopback: bool = False) -> str | None:
    """Why a (resolved) IP address must not be contacted, or None (also for a name)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if allow_loopback else UNSAFE_HOST_MESSAGE
    blocked = METADATA_HOST_MESSAGE if allow_loopback else UNSAFE_HOST_MESSAGE
    if ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip in _METADATA_ADDRESSES:
        return blocked
    if isinstance(ip, ipaddress.IPv4Address) and (ip.packed[0] == 0 or ip.packed[0] >= 224):
        return blocked
    return None


_METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254"))


def host_problem(host: str, allow_loopback: bool = False) -> str | None:
    """Why a URL's host (a name or an address) must not be contacted, or None."""
    name = host.lower().rstrip(".")
    if name in METADATA_NAMES:
        return METADATA_HOST_MESSAGE if allow_loopback else UNSAFE_HOST_MESSAGE
    if name == "localhost" or name.endswith(".localhost"):
        return None if allow_loopback else UNSAFE_HOST_MESSAGE
    return address_problem(name, allow_loopback)


def uri_problem(uri: str, rules: Sequence[Rule], allow_loopback: bool = False) -> str | None:
    """Why ``uri`` breaks ``rules`` (one of the *_RULES tables), or None when it may be fetched."""
    broken = first_broken(rules, uri)
    if broken is not None:
        return broken.message
    if "://" not in uri:
        return None
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as err:
        return f"is not a valid URL ({err})"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@); use a secretRef"
    return host_problem(host, allow_loopback)


def check_uri(uri: str, rules: Sequence[Rule], what: str, allow_loopback: bool = False) -> str:
    """``uri`` unchanged, or UnsafeUriError naming ``what`` (e.g. 'dataset.train.uri') and the rule."""
    problem = uri_problem(uri, rules, allow_loopback)
    if problem is not None:
        raise UnsafeUriError(f"{what} {uri[:200]!r} {problem}")
    return uri


def check_redirect(location: str, what: str, allow_http: bool, allow_loopback: bool = False) -> str:
    """``location`` when a redirect may be followed there; UnsafeUriError for another scheme,
    credentials or an unsafe host."""
    schemes = ("http", "https") if allow_http else ("https",)
    scheme = location.split("://", 1)[0].lower() if "://" in location else ""
    problem = (
        f"redirects only to {' or '.join(s + '://' for s in schemes)}"
        if scheme not in schemes
        else uri_problem(location, (NUMERIC_HOST,), allow_loopback)
    )
    if problem is not None:
        raise UnsafeUriError(f"{what}: refusing the redirect to {location[:200]!r}: {problem}")
    return location
