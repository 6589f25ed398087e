"""An emulated Kubernetes API server for integration tests: kmock's ``KubernetesEmulator``,
extended in one place (``server.ApiServer``) with what a real kube-apiserver does and kmock does
not, so the real ``kubectl`` and the real Kopf operator can run against it.

Modules, one behaviour each (each docstring says "a real server does X; kmock does not"):
``paths`` (REST paths), ``registry`` (served resources, CRDs), ``discovery`` (discovery and
OpenAPI), ``store`` (metadata, versions, watch events, finalizers, GC), ``patching`` (patch
types), ``selectors`` (label/field selectors), ``schema`` + ``cel_rules`` + ``admission``
(CRD defaulting, pruning, validation), ``tables`` (``kubectl get`` columns), ``errors``
(``Status`` bodies), ``cluster`` (thread, kubeconfig and test helpers).
"""

from .cluster import EmulatedCluster, HTTPError, find_kubectl
from .server import ApiServer

__all__ = ["ApiServer", "EmulatedCluster", "HTTPError", "find_kubectl"]
