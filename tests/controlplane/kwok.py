"""kwok's part of the test cluster: the fake nodes, and the pod stages kwok plays on them.

kwok plays the kubelet for pods bound to its nodes. We give it only two pod stages, so that a pod's
end is never invented: a scheduled pod becomes Running (and Ready at once when it has no readiness
probe; with one, Ready stays False until the test, playing the kubelet's prober, says otherwise),
and a deleted pod goes away. How a pod ends (exit code, termination message, a preemption) is set
by the test through the pods/status subresource, as a kubelet would report it, and the real Job
controller takes it from there. Node stages are kwok's defaults (initialize + lease heartbeats).
"""

from __future__ import annotations

from typing import Any

import yaml

NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}

_RUNNING = """\
{{ $now := Now }}
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "%(ready)s", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "%(ready)s", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: %(ready_bool)s
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" )
  ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""


def _running_stage(name: str, probe: str, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.podIP", "operator": "DoesNotExist"},
                    {"key": ".spec.containers.[0].readinessProbe", "operator": probe},
                ]
            },
            "next": {"statusTemplate": _RUNNING % {"ready": str(ready), "ready_bool": str(ready).lower()}},
        },
    }


def config(server_address: str) -> str:
    """kwok's --config: its options, and the pod stages above."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokConfiguration",
            "options": {"serverAddress": server_address},
        },
        _running_stage("pod-running-ready", "DoesNotExist", ready=True),
        _running_stage("pod-running-awaiting-probe", "Exists", ready=False),
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": "pod-delete"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {
                    "matchExpressions": [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}]
                },
                "next": {"finalizers": {"empty": True}, "delete": True},
            },
        },
    ]
    return yaml.safe_dump_all(docs)


def node(name: str, gpus: int = 0) -> dict[str, Any]:
    """A fake node: 16 CPUs and 64 Gi; GPU nodes add ``nvidia.com/gpu`` capacity, the labels the
    NVIDIA GPU operator and GKE put on them, and the usual NoSchedule taint."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    spec: dict[str, Any] = {}
    if gpus:
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            "cloud.google.com/gke-accelerator": "nvidia-h100-80gb",
        }
        capacity[GPU_RESOURCE] = str(gpus)
        spec["taints"] = [GPU_TAINT]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {NODE_ANNOTATION: "fake"}},
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def fleet(cpu_nodes: int, gpu_nodes: int, gpus_per_node: int = 8) -> list[dict[str, Any]]:
    return [node(f"kwok-cpu-{i}") for i in range(cpu_nodes)] + [
        node(f"kwok-gpu-{i}", gpus_per_node) for i in range(gpu_nodes)
    ]
