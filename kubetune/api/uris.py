"""Which locations kubetune reads and writes, and which it refuses to touch.

One table of rules per kind of location (dataset, output, base model, adapter, Prometheus URL). The
rules run as CEL at admission and as pydantic validators; ``uri_problem`` runs them again, plus the
address checks a regular expression cannot make (IPv6, mapped IPv4), right before anything is
fetched: in the trainer, the server and the operator, and on every redirect hop, on the normalised
path (``normalised_path``) for a local path. Pure: no DNS here; ``address_problem`` judges an address
a fetcher resolved (private ranges only where the chart's allowedHosts lists them, never link-local or
metadata addresses).
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urlsplit

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

# '..' also spelled percent-encoded (%2e%2e, .%2E): a server decodes it before resolving the path.
TRAVERSAL = Rule(
    "must not contain '..' path segments (path traversal), also not percent-encoded as %2e%2e",
    deny=r"(?i)(^|/|%2f)([.]|%2e)([.]|%2e)(/|%2f|$|[?#])",
)

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

# Inside the cluster: private and shared (CGNAT) IPv4 literals, the API server's names, Service names
# and single-label names (the pod's DNS search path turns `minio` into minio.<ns>.svc.cluster.local).
_HTTP_HOST = r"(?i)^https?://({})\.?(:[0-9]*)?([/?#]|$)"
_PRIVATE_V4 = (
    r"10(\.[0-9]+){3}|172\.(1[6-9]|2[0-9]|3[01])(\.[0-9]+){2}|192\.168(\.[0-9]+){2}|"
    r"100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])(\.[0-9]+){2}"
)
_API_SERVER = r"kubernetes(\.default(\.svc(\.cluster\.local)?)?)?"
_CLUSTER_NAMES = rf"[a-z0-9-]+|[a-z0-9.-]*\.(svc|cluster\.local)|{_API_SERVER}"
PRIVATE_RANGES = "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7"
INTERNAL_HOST_MESSAGE = (
    f"must name a public host: private addresses ({PRIVATE_RANGES}) and cluster-internal names "
    "(kubernetes.default, *.svc, *.cluster.local, single-label names) are refused; read in-cluster data "
    "through pvc:// or s3:// (a name that resolves to a private address is fetched only when the "
    "chart's allowedHosts lists it)"
)
INTERNAL_HOST = Rule(INTERNAL_HOST_MESSAGE, deny=_HTTP_HOST.format(f"{_PRIVATE_V4}|{_CLUSTER_NAMES}"))
API_SERVER_MESSAGE = (
    f"must not point at the Kubernetes API server (kubernetes.default.svc) or a private address literal "
    f"({PRIVATE_RANGES}); name Prometheus' Service, e.g. http://prometheus-operated.monitoring:9090"
)
API_SERVER_HOST = Rule(API_SERVER_MESSAGE, deny=_HTTP_HOST.format(f"{_PRIVATE_V4}|{_API_SERVER}"))
S3_BUCKET = Rule(
    "must name an S3 bucket that is not an IP address and has no '..'",
    deny=r"^s3://([0-9]+(\.[0-9]+){3}(/|$)|[^/]*\.\.)",
)
SYSTEM_PATH = Rule(
    "must not be under /etc, /proc, /sys, /dev, /run, /var/run, /boot or /root (system and secret "
    "locations); use a folder of the image or a PVC",
    # on the normalised path: '/./proc', '//proc' and '/var/./run' name the same folders
    deny=r"^(/+([.]/+)*)(etc|proc|sys|dev|run|var/+([.]/+)*run|boot|root)(/|$)",
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

_HOST_RULES = (NUMERIC_HOST, BLOCKED_HOST, INTERNAL_HOST)
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
# Prometheus is a Service of the cluster, so Service names pass; loopback passes admission and is
# queried only by an operator outside the cluster (next to a port-forward) or when allowedHosts names it.
PROMETHEUS_RULES = (
    _shape(PROMETHEUS_ACCEPTED, PROMETHEUS_URL),
    TRAVERSAL,
    NUMERIC_HOST,
    METADATA_HOST,
    API_SERVER_HOST,
)


# The chart's allowedHosts as the operator hands it to training pods: a JSON list of names, *.domain, CIDRs.
ALLOWED_HOSTS_ENV = "KUBETUNE_ALLOWED_HOSTS"


def allowed_hosts_from(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The allow-list in ``environ`` (empty when unset); ValueError when it is not a JSON list of strings."""
    raw = environ.get(ALLOWED_HOSTS_ENV, "").strip()
    if not raw:
        return ()
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{ALLOWED_HOSTS_ENV} must be a JSON list of host names, *.domain or CIDRs")
    return tuple(value)


class UnsafeUriError(ValueError):
    """A location kubetune refuses to read or write; the message says which rule it breaks."""


PRIVATE_MESSAGE = (
    f"is a private or cluster-internal address ({PRIVATE_RANGES}), refused unless the chart's "
    "allowedHosts (KUBETUNE_ALLOWED_HOSTS) lists it"
)
_PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (*PRIVATE_RANGES.split(", "), "fec0::/10"))
_METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254"))


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_allowed(host: str, allowed: Sequence[str]) -> bool:
    """Whether the allow-list names ``host`` (a name or an address): an exact name, ``*.suffix`` for
    every name under a domain, or a CIDR for every address in it."""
    name, ip = host.lower().rstrip("."), _ip(host)
    for entry in (a.strip().lower().rstrip(".") for a in allowed):
        if "/" in entry:
            try:
                if ip is not None and ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        elif name == entry or (entry.startswith("*.") and name.endswith(entry[1:])):
            return True
    return False


def is_cluster_internal_name(host: str) -> bool:
    """A name that resolves inside the cluster: a single label (the DNS search path completes it),
    the API server's names, ``*.svc`` and ``*.cluster.local``."""
    name = host.lower().rstrip(".")
    if _ip(name) is not None:
        return False
    internal_suffixes = (".svc", ".cluster.local")
    return "." not in name or name.startswith("kubernetes.default") or name.endswith(internal_suffixes)


def address_problem(
    address: str, allow_loopback: bool = False, allow_private: bool = False, allowed: Sequence[str] = ()
) -> str | None:
    """Why a (resolved) IP address must not be contacted, or None (also for a name). Link-local,
    metadata and broadcast addresses are never allowed; loopback and private ones only when asked or
    named by ``allowed``."""
    ip = _ip(address)
    if ip is None:
        return None
    blocked = METADATA_HOST_MESSAGE if allow_loopback else UNSAFE_HOST_MESSAGE
    if ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip in _METADATA_ADDRESSES:
        return blocked
    if isinstance(ip, ipaddress.IPv4Address) and (ip.packed[0] == 0 or ip.packed[0] >= 224):
        return blocked
    listed = is_allowed(str(ip), allowed)
    if ip.is_loopback:
        return None if allow_loopback or listed else UNSAFE_HOST_MESSAGE
    if any(ip in net for net in _PRIVATE_NETWORKS):
        return None if allow_private or listed else PRIVATE_MESSAGE
    return None


def host_problem(
    host: str, allow_loopback: bool = False, allow_private: bool = False, allowed: Sequence[str] = ()
) -> str | None:
    """Why a URL's host (a name or an address) must not be contacted, or None."""
    name = host.lower().rstrip(".")
    if name in METADATA_NAMES:
        return METADATA_HOST_MESSAGE if allow_loopback else UNSAFE_HOST_MESSAGE
    if name == "localhost" or name.endswith(".localhost"):
        return None if allow_loopback or is_allowed(name, allowed) else UNSAFE_HOST_MESSAGE
    if is_cluster_internal_name(name) and not (allow_private or is_allowed(name, allowed)):
        return INTERNAL_HOST_MESSAGE
    return address_problem(name, allow_loopback, allow_private, allowed)


def normalised_path(path: str) -> str:
    """The path a filesystem opens: percent-decoded, '.' segments, '..' and repeated '/' resolved.

    >>> normalised_path("/./proc//self/%2e/environ")
    '/proc/self/environ'
    """
    return posixpath.normpath("/" + unquote(path).lstrip("/")) if path.startswith("/") else path


def uri_problem(
    uri: str,
    rules: Sequence[Rule],
    allow_loopback: bool = False,
    allow_private: bool = False,
    allowed: Sequence[str] = (),
) -> str | None:
    """Why ``uri`` breaks ``rules`` (one of the *_RULES tables), or None when it may be fetched. A path
    is judged again after normalisation; an http(s) host also by what it names (internal or not)."""
    broken = first_broken(rules, uri) or (
        first_broken(rules, normalised_path(uri)) if uri.startswith("/") else None
    )
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
    # a bucket or claim name is no host: only http(s) names are judged as cluster-internal
    web = parts.scheme.lower() in ("http", "https")
    return host_problem(host, allow_loopback, allow_private or not web, allowed)


def check_uri(
    uri: str,
    rules: Sequence[Rule],
    what: str,
    allow_loopback: bool = False,
    allow_private: bool = False,
    allowed: Sequence[str] = (),
) -> str:
    """``uri`` unchanged, or UnsafeUriError naming ``what`` (e.g. 'dataset.train.uri') and the rule."""
    problem = uri_problem(uri, rules, allow_loopback, allow_private, allowed)
    if problem is not None:
        raise UnsafeUriError(f"{what} {uri[:200]!r} {problem}")
    return uri


def check_redirect(
    location: str,
    what: str,
    allow_http: bool,
    allow_loopback: bool = False,
    allow_private: bool = False,
    allowed: Sequence[str] = (),
) -> str:
    """``location`` when a redirect may be followed there; UnsafeUriError for another scheme,
    credentials or an unsafe host."""
    schemes = ("http", "https") if allow_http else ("https",)
    scheme = location.split("://", 1)[0].lower() if "://" in location else ""
    problem = (
        f"redirects only to {' or '.join(s + '://' for s in schemes)}"
        if scheme not in schemes
        else uri_problem(location, (NUMERIC_HOST,), allow_loopback, allow_private, allowed)
    )
    if problem is not None:
        raise UnsafeUriError(f"{what}: refusing the redirect to {location[:200]!r}: {problem}")
    return location


def _as_folder(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


def writes_into(output: str, location: str) -> bool:
    """Whether a run writing under ``output`` writes into ``location`` (the same place or inside it).

    >>> writes_into("pvc://out/adapters/", "pvc://out/adapters"), writes_into("pvc://out", "pvc://out/a")
    (True, False)
    """
    return _as_folder(output).startswith(_as_folder(location))


def writes_into_cel(output: str, location: str) -> str:
    """``writes_into`` as a CEL expression over two string expressions."""
    folder = "({0}.endsWith('/') ? {0} : {0} + '/')"
    return f"{folder.format(output)}.startsWith({folder.format(location)})"
