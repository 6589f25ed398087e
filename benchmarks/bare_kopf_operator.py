"""The framework floor for benchmarks/operator_scale.py and adapter_scale.py: a bare Kopf operator that
creates one Job per FineTuneJob and one Deployment per AdapterDeployment, and does nothing else (no
status, no resync timer, no other children).

    python -m kopf run --standalone -n <namespace> benchmarks/bare_kopf_operator.py

It logs in from the kubeconfig (as the real operator does outside a cluster) and posts the Job with
aiohttp, the same client library the real operator's child client uses. Kopf's per-handler events
are off, as in the real operator (``settings.posting.level``); everything else is Kopf's default.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import aiohttp
import kopf

IMAGE = "registry.example/trainer:1.2.3"


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(settings=settings)


@kopf.on.startup()
async def connect(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.CRITICAL
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.PermanentError("no kubeconfig")
    context: ssl.SSLContext | bool = False
    if info.server.startswith("https://"):
        context = ssl.create_default_context(cafile=info.ca_path)
        if info.certificate_path:
            context.load_cert_chain(info.certificate_path, info.private_key_path)
    headers = {"Authorization": f"Bearer {info.token}"} if info.token else {}
    memo.server = info.server
    memo.session = aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=context))


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.session.close()


def owner_of(body: kopf.Body) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_for(body: kopf.Body) -> dict[str, Any]:
    """One small Job named like the real operator's first child, owned by the FineTuneJob."""
    meta, owner = body["metadata"], owner_of(body)
    container = {
        "name": "validate",
        "image": IMAGE,
        "command": ["true"],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{meta['name']}-validate", "ownerReferences": [owner]},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


@kopf.on.create("kubetune.dev", "v1alpha1", "finetunejobs")
async def create_job(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    url = f"{memo.server}/apis/batch/v1/namespaces/{namespace}/jobs"
    async with memo.session.post(url, json=job_for(body)) as response:
        if response.status == 409:
            return  # made by an earlier try
        if response.status >= 300:
            raise kopf.TemporaryError(f"HTTP {response.status}: {await response.text()}", delay=1)


def deployment_for(body: kopf.Body) -> dict[str, Any]:
    """One small Deployment named like the real operator's serving Deployment, spec.replicas pods."""
    name = body["metadata"]["name"]
    labels = {"app.kubernetes.io/name": "floor-server", "kubetune.dev/adapterdeployment": name}
    container = {
        "name": "server",
        "image": IMAGE,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-server", "ownerReferences": [owner_of(body)]},
        "spec": {
            "replicas": body["spec"].get("replicas", 1),
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


@kopf.on.create("kubetune.dev", "v1alpha1", "adapterdeployments")
async def create_deployment(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    url = f"{memo.server}/apis/apps/v1/namespaces/{namespace}/deployments"
    async with memo.session.post(url, json=deployment_for(body)) as response:
        if response.status == 409:
            return
        if response.status >= 300:
            raise kopf.TemporaryError(f"HTTP {response.status}: {await response.text()}", delay=1)
