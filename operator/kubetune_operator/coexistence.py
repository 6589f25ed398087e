"""Before Kopf starts: is another kubetune operator (the chart's) already reconciling our namespaces?

Kopf's peering only sees peers in the one peering object it joins: a ``--standalone`` operator
sees none, a namespaced one (``-n``) only ``KopfPeering`` objects in its namespaces, a cluster-wide
one only ``ClusterKopfPeering`` objects. A live peer in any other kubetune peering whose namespaces
overlap ours would reconcile the same FineTuneJobs and AdapterDeployments, and the two would roll
each other's serving Deployments back and forth. ``conflicts`` finds those peers (pure), ``preflight``
reads the cluster; ``main.run`` refuses to start on a conflict and warns when the chart's operator
Deployment runs other trainer/server images than this process would.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import kopf

from kubetune_operator.kube import Kube, KubeBusy, KubeError
from kubetune_operator.settings import TAKEOVER_PRIORITY, OperatorSettings

# The chart labels every object it renders with these (templates/_helpers.tpl, kubetune.labels).
PART_OF = "app.kubernetes.io/part-of=kubetune"
OPERATOR_DEPLOYMENTS = f"{PART_OF},app.kubernetes.io/component=operator"
IMAGE_VARIABLES = {"KUBETUNE_TRAINER_IMAGE": "trainer_image", "KUBETUNE_SERVER_IMAGE": "server_image"}
IMAGE_FLAGS = {"trainer_image": "--trainer-image", "server_image": "--server-image"}
BUSY_RETRIES = 5  # 429/5xx answers to a list, each after its Retry-After (about 1 s)

log = logging.getLogger("kubetune.coexistence")


@dataclass(frozen=True)
class Scope:
    """Namespaces an operator reconciles: every one, or those listed."""

    all_namespaces: bool
    namespaces: frozenset[str] = frozenset()

    def overlaps(self, other: Scope) -> bool:
        return self.all_namespaces or other.all_namespaces or bool(self.namespaces & other.namespaces)

    def describe(self) -> str:
        return "all namespaces" if self.all_namespaces else ", ".join(sorted(self.namespaces))


def operator_scope(namespaces: Iterable[str], all_namespaces: bool) -> Scope:
    """`kubetune operator` without -n is cluster-wide, as Kopf runs it."""
    listed = frozenset(namespaces)
    return Scope(all_namespaces or not listed, listed)


@dataclass(frozen=True)
class Peer:
    identity: str
    priority: int
    seconds_left: float


@dataclass(frozen=True)
class Conflict:
    """Live peers in a peering object this operator would not take part in."""

    kind: str  # ClusterKopfPeering or KopfPeering
    name: str
    namespace: str | None
    peers: tuple[Peer, ...]

    @property
    def scope(self) -> Scope:
        return Scope(True) if self.namespace is None else Scope(False, frozenset({self.namespace}))

    def join_command(self) -> str:
        where = "--all-namespaces" if self.namespace is None else f"--namespace={self.namespace}"
        return f"kubetune operator {where} --peering={self.name} --priority={TAKEOVER_PRIORITY}"


def live_peers(peering: dict[str, Any], now: datetime.datetime) -> tuple[Peer, ...]:
    """Peers whose keep-alive has not expired: Kopf writes ``status.<identity>`` =
    ``{priority, lifetime, lastseen}`` and presumes a peer dead ``lifetime`` seconds after ``lastseen``
    (a clean exit writes lifetime 0)."""
    peers = []
    for identity, info in sorted((peering.get("status") or {}).items()):
        if not isinstance(info, dict) or "lastseen" not in info:
            continue
        lastseen = datetime.datetime.fromisoformat(str(info["lastseen"]).replace("Z", "+00:00"))
        left = (lastseen + datetime.timedelta(seconds=int(info.get("lifetime", 60))) - now).total_seconds()
        if left > 0:
            peers.append(Peer(identity, int(info.get("priority", 0)), left))
    return tuple(peers)


def seen_by_kopf(kind: str, name: str, namespace: str | None, *, mine: Scope, peering: str | None) -> bool:
    """Whether our own Kopf peering would see this peering object (and so pause or be paused)."""
    if peering is None or name != peering:
        return False
    if mine.all_namespaces:
        return kind == "ClusterKopfPeering"
    return kind == "KopfPeering" and namespace in mine.namespaces


def conflicts(
    peerings: Iterable[dict[str, Any]], *, mine: Scope, peering: str | None, now: datetime.datetime
) -> list[Conflict]:
    """Kubetune peering objects with live peers that reconcile some of our namespaces and that our
    Kopf would not see (``peering`` None: standalone, it sees none)."""
    found = []
    for obj in peerings:
        kind, meta = obj.get("kind", ""), obj["metadata"]
        conflict = Conflict(kind, meta["name"], meta.get("namespace"), live_peers(obj, now))
        if not conflict.peers or not mine.overlaps(conflict.scope):
            continue
        if not seen_by_kopf(kind, conflict.name, conflict.namespace, mine=mine, peering=peering):
            found.append(conflict)
    return found


def deployment_scope(deployment: dict[str, Any]) -> Scope:
    """The namespaces of a chart operator Deployment, from its container's arguments."""
    args = _operator_container(deployment).get("args") or []
    namespaces: set[str] = set()
    all_namespaces = False
    for i, arg in enumerate(args):
        if arg in ("-A", "--all-namespaces"):
            all_namespaces = True
        elif arg.startswith("--namespace="):
            namespaces.add(arg.split("=", 1)[1])
        elif arg in ("-n", "--namespace") and i + 1 < len(args):
            namespaces.add(args[i + 1])
    return operator_scope(namespaces, all_namespaces)


def _operator_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    return next((c for c in containers if c.get("name") == "operator"), containers[0])


def image_differences(deployment: dict[str, Any], settings: OperatorSettings) -> dict[str, tuple[str, str]]:
    """setting -> (ours, the Deployment's) for each image the chart's operator sets otherwise."""
    env = {e.get("name"): e.get("value") for e in _operator_container(deployment).get("env") or []}
    differ = {}
    for variable, field in IMAGE_VARIABLES.items():
        theirs, ours = env.get(variable), getattr(settings, field)
        if theirs and theirs != ours:
            differ[field] = (ours, theirs)
    return differ


def matching_flags(differ: dict[str, tuple[str, str]]) -> str:
    """The flags that give this operator the chart's images."""
    return " ".join(f"{IMAGE_FLAGS[field]}={shlex.quote(theirs)}" for field, (_, theirs) in differ.items())


def conflict_message(
    found: list[Conflict], mine: Scope, deployments: list[dict[str, Any]], images: str = ""
) -> str:
    """The refusal: who is active, why that is a fight, and the two ways out (``images``: the flags
    that match the chart's images, added to the join command)."""
    lines = [f"refusing to start: a kubetune operator is active for {mine.describe()}:"]
    for c in found:
        where = "cluster-wide" if c.namespace is None else f"in namespace {c.namespace}"
        peers = ", ".join(f"{p.identity} (priority {p.priority})" for p in c.peers)
        lines.append(f"  {c.kind} {c.name!r} {where}: live peers {peers}")
    lines += [
        "Kopf peering would not pause either of you, so both would reconcile the same FineTuneJobs and",
        "AdapterDeployments and roll each other's serving Deployments. Either join its peering with a higher",
        "priority (its replicas pause while yours runs, and resume when it exits):",
        *(f"  {c.join_command()} {images}".rstrip() for c in found),
        "or stop it first:",
    ]
    scale = [
        f"  kubectl scale deployment {d['metadata']['name']} -n {d['metadata']['namespace']} --replicas=0"
        for d in deployments
        if mine.overlaps(deployment_scope(d))
    ]
    lines += scale or ["  kubectl scale deployment <the chart's operator Deployment> --replicas=0"]
    return "\n".join(lines)


def image_warning(deployment: dict[str, Any], differ: dict[str, tuple[str, str]]) -> str:
    meta = deployment["metadata"]
    lines = [
        f"IMAGES DIFFER from the chart's operator Deployment {meta['namespace']}/{meta['name']}:",
        *(
            f"  {field}: this operator {ours!r}, the chart's {theirs!r}"
            for field, (ours, theirs) in differ.items()
        ),
        "Every training pod this operator starts and every serving Deployment it reconciles gets its images:",
        "serving pods roll to them, and back once the chart's operator reconciles again. To match the chart:",
        f"  {matching_flags(differ)}",
    ]
    return "\n".join(lines)


async def _list(kube: Kube, path: str, selector: str, loud: bool) -> list[dict[str, Any]] | None:
    """The items, or None when our credentials may not list them (logged: that check is skipped).
    "Come back later" (429/5xx, e.g. a peering CRD whose storage is still initializing) is retried
    a few times, as Kopf would."""
    for attempt in range(BUSY_RETRIES + 1):
        try:
            return await kube.list(path, selector)
        except KubeBusy as err:
            if attempt == BUSY_RETRIES:
                raise
            await asyncio.sleep(err.delay or 1.0)
        except KubeError as err:
            if err.status != 403:
                raise
            log.log(logging.WARNING if loud else logging.DEBUG, "cannot list %s: not checked (%s)", path, err)
            return None
    return None


async def _read(
    kube: Kube, group_path: str, plural: str, mine: Scope, selector: str, loud: bool
) -> list[dict[str, Any]]:
    """Cluster-wide when allowed, else namespace by namespace (a namespaced operator's Roles)."""
    items = await _list(kube, f"{group_path}/{plural}", selector, loud and mine.all_namespaces)
    if items is not None or mine.all_namespaces:
        return items or []
    items = []
    for ns in sorted(mine.namespaces):
        items += await _list(kube, f"{group_path}/namespaces/{ns}/{plural}", selector, loud) or []
    return items


async def preflight(
    info: kopf.ConnectionInfo, settings: OperatorSettings, mine: Scope, peering: str | None
) -> str | None:
    """Read the kubetune peerings and operator Deployments; log an image warning for each
    Deployment of our namespaces with other images; return the refusal message on a conflict.
    A standalone operator (``peering`` None) warns when it may not read something."""
    kube = Kube(info)
    loud = peering is None
    try:
        clusterwide = await _list(kube, "/apis/kopf.dev/v1/clusterkopfpeerings", PART_OF, loud) or []
        namespaced = await _read(kube, "/apis/kopf.dev/v1", "kopfpeerings", mine, PART_OF, loud)
        deployments = await _read(kube, "/apis/apps/v1", "deployments", mine, OPERATOR_DEPLOYMENTS, loud)
    finally:
        await kube.close()
    # List items of a custom resource carry their kind, but the path says it for certain.
    peerings = [{**p, "kind": "ClusterKopfPeering"} for p in clusterwide]
    peerings += [{**p, "kind": "KopfPeering"} for p in namespaced]
    images = ""
    for deployment in deployments:
        differ = image_differences(deployment, settings)
        if differ and mine.overlaps(deployment_scope(deployment)):
            log.warning(image_warning(deployment, differ))
            images = images or matching_flags(differ)
    now = datetime.datetime.now(datetime.UTC)
    found = conflicts(peerings, mine=mine, peering=peering, now=now)
    if found:
        return conflict_message(found, mine, deployments, images)
    outside = "" if peering is None else f" outside peering {peering!r}"
    log.info("no other kubetune operator is active for %s%s", mine.describe(), outside)
    return None
