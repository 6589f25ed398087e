"""Parse Kubernetes REST paths (``/apis/<g>/<v>/namespaces/<ns>/<plural>/<name>/<sub>``).

kmock's parser raises on ``/api/v1/namespaces`` and reads ``/api/v1/namespaces/default`` as a
namespace with no resource; the real server treats both as the ``namespaces`` resource.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ApiPath:
    group: str
    version: str | None = None
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_api_path(path: str) -> ApiPath | None:
    """``None`` for paths outside ``/api`` and ``/apis``."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or parts[0] not in ("api", "apis"):
        return None
    if parts[0] == "api":
        group, rest = "", parts[1:]
        if not rest:
            return ApiPath(group="")
        version, rest = rest[0], rest[1:]
    else:
        if len(parts) == 1:
            return None
        group, rest = parts[1], parts[2:]
        if not rest:
            return ApiPath(group=group)
        version, rest = rest[0], rest[1:]
    namespace = None
    # /namespaces/<ns>/<plural>/... is namespaced; /namespaces[/<name>[/status|finalize]] is the
    # namespaces resource itself.
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return ApiPath(group, version, plural, namespace, name, subresource)
