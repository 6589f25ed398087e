"""A real Kubernetes control plane for the integration and e2e tests (see tests/conftest.py)."""

from .cluster import Cluster, HTTPError, now
from .plane import ControlPlane

__all__ = ["Cluster", "ControlPlane", "HTTPError", "now"]
