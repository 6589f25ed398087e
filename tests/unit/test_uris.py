"""Location rules: the pure check shared by admission, pydantic and the fetchers, and the fetchers
re-checking resolved addresses, redirects and the S3 endpoint right before they fetch."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
from kubetune_operator.prometheus import PrometheusError, check_prometheus_url
from kubetune_trainer import fetch

from kubetune.api import uris
from kubetune.api.uris import UnsafeUriError, check_redirect, check_uri, host_problem, uri_problem


@pytest.mark.parametrize(
    ("uri", "rules", "problem"),
    [
        ("https://example.com/train.jsonl?sig=a%2Fb", uris.DATA_RULES, None),
        ("https://10.0.0.5:8443/train.jsonl", uris.DATA_RULES, "must name a public host"),
        ("https://minio/train.jsonl", uris.DATA_RULES, "must name a public host"),
        ("https://kubernetes.default.svc/api", uris.DATA_RULES, "must name a public host"),
        ("https://a.b.svc.cluster.local:8443/x", uris.MODEL_RULES, "must name a public host"),
        ("https://100.127.255.1/x", uris.DATA_RULES, "must name a public host"),
        ("https://100.128.0.1/x", uris.DATA_RULES, None),
        ("https://172.32.0.1/x", uris.DATA_RULES, None),
        ("https://svc.example.com/x", uris.DATA_RULES, None),
        ("https://example.com/a/%2E%2e/b", uris.DATA_RULES, "path traversal"),
        ("https://example.com/a/..%2Fb", uris.DATA_RULES, "path traversal"),
        ("/./proc/self/environ", uris.MODEL_RULES, "must not be under /etc, /proc"),
        ("/var/./run/secrets/kubernetes.io", uris.MODEL_RULES, "must not be under /etc, /proc"),
        ("/models/./minilm", uris.MODEL_RULES, None),
        ("pvc://kubetune-data/a/b.jsonl", uris.DATA_RULES, None),
        ("file:///etc/passwd", uris.DATA_RULES, "must be pvc://"),
        ("https://169.254.169.254/latest", uris.DATA_RULES, "must not point at the pod itself"),
        ("https://LOCALHOST./x", uris.DATA_RULES, "must be pvc://"),
        ("https://127.0.0.1/x", uris.DATA_RULES, "must not point at the pod itself"),
        ("https://2852039166/x", uris.DATA_RULES, "dotted-quad"),
        ("https://0xa9fea9fe/x", uris.DATA_RULES, "dotted-quad"),
        ("s3://169.254.169.254/x", uris.OUTPUT_RULES, "not an IP address"),
        ("s3://my..bucket/x", uris.OUTPUT_RULES, "has no '..'"),
        ("pvc://c/../x", uris.OUTPUT_RULES, "path traversal"),
        ("/proc/self/environ", uris.MODEL_RULES, "must not be under /etc, /proc"),
        ("//etc/passwd", uris.CHAMPION_RULES, "must be pvc://"),
        ("/models/minilm", uris.MODEL_RULES, None),
        ("http://127.0.0.1:9090", uris.PROMETHEUS_RULES, None),
        ("http://prometheus-operated.monitoring.svc:9090", uris.PROMETHEUS_RULES, None),
        ("https://kubernetes.default.svc.cluster.local", uris.PROMETHEUS_RULES, "Kubernetes API server"),
        ("http://192.168.3.4:9090", uris.PROMETHEUS_RULES, "Kubernetes API server"),
        ("http://metadata.google.internal", uris.PROMETHEUS_RULES, "cloud-metadata"),
        ("http://prom:9090/?q=1", uris.PROMETHEUS_RULES, "no credentials, query or fragment"),
    ],
)
def test_uri_problem(uri: str, rules: Any, problem: str | None) -> None:
    prometheus = rules is uris.PROMETHEUS_RULES
    found = uri_problem(uri, rules, allow_loopback=prometheus, allow_private=prometheus)
    assert found is None if problem is None else problem in (found or "")


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.1"]
)
def test_link_local_and_metadata_addresses_are_refused_even_with_loopback_allowed(host: str) -> None:
    assert host_problem(host, allow_loopback=True) == uris.METADATA_HOST_MESSAGE


def test_loopback_is_refused_unless_allowed() -> None:
    assert host_problem("::1") == uris.UNSAFE_HOST_MESSAGE and host_problem("evil.localhost")
    assert host_problem("127.0.0.1", allow_loopback=True) is None


def test_check_uri_names_the_field() -> None:
    with pytest.raises(UnsafeUriError, match=r"^dataset\.train\.uri 'https://169\.254"):
        check_uri("https://169.254.169.254/x", uris.DATA_RULES, "dataset.train.uri")


@pytest.mark.parametrize(
    ("location", "allow_http", "problem"),
    [
        ("https://cdn.example.com/x", False, None),
        ("http://cdn.example.com/x", False, "redirects only to https://"),
        ("file:///etc/passwd", True, "redirects only to http:// or https://"),
        ("https://[fd00:ec2::254]/latest", False, "cloud-metadata"),
        ("https://u:p@cdn.example.com/x", False, "must not carry credentials"),
    ],
)
def test_check_redirect(location: str, allow_http: bool, problem: str | None) -> None:
    if problem is None:
        assert check_redirect(location, "dataset", allow_http) == location
    else:
        with pytest.raises(UnsafeUriError, match=problem):
            check_redirect(location, "dataset", allow_http)


def resolve_to(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    def fake(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_https_get_refuses_a_name_that_resolves_to_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_to(monkeypatch, "169.254.169.254")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"secret"))

    with pytest.raises(UnsafeUriError, match=r"host 'rebind\.example\.com'"):
        fetch.https_get("https://rebind.example.com/x.jsonl", uris.DATA_RULES, "dataset", {}, 5, transport)


def test_https_get_follows_safe_redirects_and_refuses_a_downgrade(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_to(monkeypatch, "93.184.216.34")
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/start":
            return httpx.Response(302, headers={"location": "https://cdn.example.org/data.jsonl"})
        if request.url.path == "/data.jsonl":
            return httpx.Response(200, content=b'{"text": "hi"}\n')
        return httpx.Response(302, headers={"location": "http://cdn.example.org/data.jsonl"})

    transport = httpx.MockTransport(answer)
    headers = {"Authorization": "Bearer t"}
    body = fetch.https_get(
        "https://data.example.com/start", uris.DATA_RULES, "dataset", headers, 5, transport
    )
    with pytest.raises(UnsafeUriError, match="redirects only to https://"):
        fetch.https_get("https://data.example.com/downgrade", uris.DATA_RULES, "dataset", {}, 5, transport)

    assert body == b'{"text": "hi"}\n'
    assert "authorization" in seen[0].headers and "authorization" not in seen[1].headers


def test_s3_endpoint_from_a_secret_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://169.254.169.254")
    with pytest.raises(UnsafeUriError, match="AWS_ENDPOINT_URL"):
        fetch.s3_endpoint("dataset")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert fetch.s3_endpoint("dataset") == "http://127.0.0.1:9000"


def test_operator_rechecks_the_prometheus_url_and_its_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(check_prometheus_url("http://127.0.0.1:9090", allow_loopback=True))
    with pytest.raises(PrometheusError, match="must not point at the pod itself"):
        asyncio.run(check_prometheus_url("http://127.0.0.1:9090", allow_loopback=False))
    with pytest.raises(PrometheusError, match="cloud-metadata"):
        asyncio.run(check_prometheus_url("http://169.254.169.254/"))
    resolve_to(monkeypatch, "169.254.169.254")
    with pytest.raises(PrometheusError, match=r"resolves to 169\.254\.169\.254"):
        asyncio.run(check_prometheus_url("http://prometheus.monitoring:9090"))


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("10.1.2.3", uris.PRIVATE_MESSAGE),
        ("172.31.255.255", uris.PRIVATE_MESSAGE),
        ("192.168.0.1", uris.PRIVATE_MESSAGE),
        ("100.64.0.1", uris.PRIVATE_MESSAGE),
        ("fd12::1", uris.PRIVATE_MESSAGE),
        ("::ffff:10.0.0.1", uris.PRIVATE_MESSAGE),
        ("[::1]", uris.UNSAFE_HOST_MESSAGE),
        ("127.1.2.3", uris.UNSAFE_HOST_MESSAGE),
        ("minio", uris.INTERNAL_HOST_MESSAGE),
        ("kubernetes.default", uris.INTERNAL_HOST_MESSAGE),
        ("Vault.Vault.SVC.", uris.INTERNAL_HOST_MESSAGE),
        ("db.prod.svc.cluster.local", uris.INTERNAL_HOST_MESSAGE),
        ("172.15.0.1", None),
        ("100.63.255.255", None),
        ("8.8.8.8", None),
        ("huggingface.co", None),
    ],
)
def test_host_classification(host: str, problem: str | None) -> None:
    assert host_problem(host) == problem


def test_the_allow_list_names_private_hosts_but_never_metadata() -> None:
    allowed = ["minio", "*.data.svc", "10.20.0.0/16", "169.254.169.254"]

    assert host_problem("minio", allowed=allowed) is None
    assert host_problem("store.data.svc", allowed=allowed) is None
    assert host_problem("10.20.3.4", allowed=allowed) is None
    assert host_problem("10.21.3.4", allowed=allowed) == uris.PRIVATE_MESSAGE
    assert host_problem("other.svc", allowed=allowed) == uris.INTERNAL_HOST_MESSAGE
    assert host_problem("169.254.169.254", allowed=allowed) == uris.UNSAFE_HOST_MESSAGE


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/./proc/self/environ", "/proc/self/environ"),
        ("//etc//passwd", "/etc/passwd"),
        ("/models/%2e%2e/root/.ssh", "/root/.ssh"),
        ("/var/./run/secrets", "/var/run/secrets"),
        ("/models/minilm/", "/models/minilm"),
        ("org/model", "org/model"),
    ],
)
def test_normalised_path(path: str, normal: str) -> None:
    assert uris.normalised_path(path) == normal


def test_the_runtime_check_judges_the_normalised_path() -> None:
    with pytest.raises(UnsafeUriError, match="must not be under /etc"):
        check_uri("/./root/adapter", uris.CHAMPION_RULES, "evaluation.championUri")
    assert check_uri("/models/./adapter", uris.CHAMPION_RULES, "evaluation.championUri")


def test_https_get_refuses_a_name_that_resolves_to_a_private_address_unless_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolve_to(monkeypatch, "10.0.7.7")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"rows"))
    url = "https://data.corp.example/x.jsonl"

    with pytest.raises(UnsafeUriError, match=r"host 'data\.corp\.example' is a private"):
        fetch.https_get(url, uris.DATA_RULES, "dataset", {}, 5, transport)
    monkeypatch.setenv(uris.ALLOWED_HOSTS_ENV, '["*.corp.example"]')
    assert fetch.https_get(url, uris.DATA_RULES, "dataset", {}, 5, transport) == b"rows"
    monkeypatch.setenv(uris.ALLOWED_HOSTS_ENV, '["10.0.0.0/8"]')
    assert fetch.https_get(url, uris.DATA_RULES, "dataset", {}, 5, transport) == b"rows"


def test_s3_endpoint_may_be_a_cluster_service(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_to(monkeypatch, "10.96.4.4")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.storage.svc:9000")
    assert fetch.s3_endpoint("dataset") == "http://minio.storage.svc:9000"


def test_allowed_hosts_env_must_be_a_json_list() -> None:
    assert uris.allowed_hosts_from({}) == ()
    assert uris.allowed_hosts_from({uris.ALLOWED_HOSTS_ENV: '["a", "10.0.0.0/8"]'}) == ("a", "10.0.0.0/8")
    with pytest.raises(ValueError, match="JSON list"):
        uris.allowed_hosts_from({uris.ALLOWED_HOSTS_ENV: '{"a": 1}'})


@pytest.mark.parametrize(
    ("output", "location", "into"),
    [
        ("pvc://out/a", "pvc://out/a/", True),
        ("pvc://out/a/b", "pvc://out/a", True),
        ("pvc://out/a", "pvc://out/a/b", False),
        ("pvc://out/ab", "pvc://out/a", False),
        ("s3://b/a", "pvc://b/a", False),
    ],
)
def test_writes_into(output: str, location: str, into: bool) -> None:
    assert uris.writes_into(output, location) is into
