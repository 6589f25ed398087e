"""Keeps the engine's loaded LoRA set equal to the ServeConfig's adapters, and the bare-name aliases.

Each version is loaded as ``name@version`` and never reloaded under that name with other weights
(vLLM #42125). A rollout loads the new version, flips the alias ``name`` to it, waits for the old
version's in-flight requests, unloads it and checks that the engine no longer lists it (vLLM #54839).
The same reconcile runs at start, on every change of the ServeConfig file and every
``engine.syncIntervalS``, so a restarted or scaled-out engine gets every adapter back (AIBrix #1095);
``/readyz`` turns ready only once the engine holds every desired adapter.

With runtime vllm a new version arrives in place: the operator rewrites the ServeConfig ConfigMap,
the kubelet swaps the mounted file (a directory mount, never subPath, so it is refreshed), and the
next pass here picks it up; the pod keeps running. Because that reaches every pod at once, a version
the engine cannot load leaves a ready pod ready, serving the versions its aliases still route to
(the rollout shows it stuck, see served_report.py); a pod that never held its set is not ready.
Each change of what the aliases route to, or of why a version failed to load, is logged as
served_report's line, which the operator reads (and quotes when an in-place load stalls).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.api.loading import ConfigError
from kubetune_trainer.serve.adapters import adapter_folder
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig, load_serve_config
from kubetune_trainer.serve.engine_client import EngineCallError, EngineClient, EngineUnavailableError
from kubetune_trainer.serve.engine_drift import EngineDrift
from kubetune_trainer.serve.engine_monitor import EngineMonitor
from kubetune_trainer.serve.errors import AdapterLoadError, ModelNotFoundError
from kubetune_trainer.serve.served_report import serving_line
from kubetune_trainer.serve.state import ServerState

log = logging.getLogger("kubetune.serve")


def desired_set(adapters: list[AdapterSpec]) -> dict[str, AdapterSpec]:
    """name@version -> spec, in the config's order."""
    return {f"{a.name}@{a.version}": a for a in adapters}


def aliases(adapters: list[AdapterSpec]) -> dict[str, str]:
    """Bare name -> the version it serves: the one listed last (as the server's registry does).

    >>> v1, v2 = (AdapterSpec(name="t", version=v, uri="/a") for v in ("v1", "v2"))
    >>> aliases([v1, v2])
    {'t': 't@v2'}
    """
    return {a.name: f"{a.name}@{a.version}" for a in adapters}


@dataclass
class Route:
    """Where one request goes: the engine's model id and our metric labels."""

    engine_model: str
    labels: tuple[str, str]


@dataclass
class EngineSync:
    state: ServerState
    client: EngineClient
    alias: dict[str, str] = field(default_factory=dict)  # name -> name@version the engine answers with
    engine_base: str | None = None  # the engine's id of the base model
    engine_owner: str | None = None  # who the engine says it is (owned_by: "vllm"), for kubetune_runtime_info
    served: set[str] = field(default_factory=set)  # name@version ids requests may be sent to
    in_flight: Counter[str] = field(default_factory=Counter)  # engine model id -> requests running
    last_error: str | None = None
    folders: dict[str, Path] = field(default_factory=dict)  # name@version -> its local adapter folder
    drift: EngineDrift | None = None  # monitoring.enabled: the scores computable without the model
    monitor: EngineMonitor | None = None  # monitoring.enabled: answers' confidence from their logprobs
    _config_text: str | None = None
    load_errors: dict[str, str] = field(default_factory=dict)  # name@version -> why its last load failed
    _reported: tuple[dict[str, str], dict[str, str]] | None = None  # the last serving line logged
    unmonitored: set[str] = field(default_factory=set)  # name@version whose drift reference is missing
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        monitoring, metrics = self.config.monitoring, self.state.metrics
        if monitoring.enabled:
            self.drift = EngineDrift(metrics.drift_score, metrics.drift_window, monitoring.window_size)
            metrics.before_render.append(self.drift.refresh)
            self.monitor = EngineMonitor.build(self.state, self.drift)

    @property
    def config(self) -> ServeConfig:
        return self.state.config

    def route(self, model: str) -> Route:
        """A client's `model` (bare name, name@version, or the base id) -> the engine's id."""
        config = self.config
        if model == config.base_model_id and self.engine_base is not None:
            return Route(self.engine_base, (model, ""))
        target = self.alias.get(model, model)
        if "@" in target and target in self.served:
            name, _, version = target.partition("@")
            return Route(target, (name, version))
        raise ModelNotFoundError(f"model {model!r} is not served here; GET /v1/models lists them", "model")

    @contextmanager
    def running(self, route: Route) -> Iterator[None]:
        """Count a request on its engine model, so an unload waits for it."""
        self.in_flight[route.engine_model] += 1
        try:
            yield
        finally:
            self.in_flight[route.engine_model] -= 1

    async def run(self) -> None:
        """Reconcile now and then every syncIntervalS until cancelled."""
        assert self.config.engine is not None
        while True:
            await self.reconcile()
            await asyncio.sleep(self.config.engine.sync_interval_s)

    async def reconcile(self) -> None:
        """One pass: re-read the config file, load what is missing, flip aliases, unload the rest."""
        async with self._lock:
            try:
                self._reread_config()
                await self._reconcile()
                self.last_error = None
            except (EngineUnavailableError, EngineCallError, ConfigError, AdapterLoadError) as err:
                text = getattr(err, "message", None) or str(err)
                if text != self.last_error:
                    log.warning("engine sync: %s", text)
                self.last_error = text
                self.state.ready = self.state.ready and self._aliases_served(err)
            self._report()

    def _report(self) -> None:
        """Log the serving line when what the aliases route to, or a version's load failure, changed."""
        report = (dict(self.alias), dict(self.load_errors))
        if report != self._reported and (self._reported is not None or any(report)):
            log.info("%s", serving_line(*report))
            self._reported = report

    def _aliases_served(self, err: Exception) -> bool:
        """Whether a ready pod stays ready after a failed pass: the engine answers and every alias
        still routes to a version it held at the last pass (the new version failed, the old serves)."""
        if isinstance(err, EngineUnavailableError):
            return False
        return bool(self.alias) and set(self.alias.values()) <= self.served

    def _reread_config(self) -> None:
        engine = self.config.engine
        if engine is None or engine.config_file is None:
            return
        text = Path(engine.config_file).read_text()
        if text == self._config_text:
            return
        first = self._config_text is None
        self._config_text = text
        if first:
            return  # the config the server started with
        fresh = load_serve_config(Path(engine.config_file))
        log.info(
            "engine sync: %s changed; adapters now %s",
            engine.config_file,
            sorted(desired_set(fresh.adapters)),
        )
        self.state.config = self.config.model_copy(update={"adapters": fresh.adapters})

    async def _reconcile(self) -> None:
        config = self.config
        wanted = desired_set(config.adapters)
        held = await self.client.models()
        self.engine_base, self.engine_owner = held.base, held.owner
        if self.served - held.loras:  # the engine restarted and lost adapters it served: not ready
            self.state.ready = False
        self.served &= held.loras
        self.load_errors = {m: e for m, e in self.load_errors.items() if m in wanted and m not in held.loras}
        for model_id, spec in wanted.items():
            if model_id not in held.loras:
                try:
                    folder = await self._folder(model_id, spec)
                    log.info("engine sync: loading %s from %s (%s)", model_id, spec.uri, folder)
                    await self.client.load_lora(model_id, str(folder))
                except (EngineCallError, AdapterLoadError) as err:
                    self.load_errors[model_id] = getattr(err, "message", None) or str(err)
                    raise
                self.load_errors.pop(model_id, None)
            self.served.add(model_id)
            # A version without a reference is tried once: a log line per pass would bury the
            # serving line the operator reads.
            unwatched = self.drift is not None and not self.drift.watching(spec.name, spec.version)
            if unwatched and model_id not in self.unmonitored:
                await self._watch(model_id, spec)
        self.alias = aliases(config.adapters)
        stale = sorted(m for m in held.loras if "@" in m and m not in wanted)
        self.served -= set(stale)  # no new request goes there; those running finish first
        for model_id in stale:
            await self._drain(model_id)
            log.info("engine sync: unloading %s", model_id)
            await self.client.unload_lora(model_id)
            self.folders.pop(model_id, None)
            if self.drift is not None:
                self.drift.forget(*model_id.split("@", 1))
        now = await self.client.models()
        missing = sorted(set(wanted) - now.loras)
        left = sorted(set(stale) & now.loras)
        for model_id in missing:
            self.load_errors.setdefault(model_id, "the engine accepted the load but does not list it")
        if missing or left:
            raise EngineCallError(
                f"engine still lacks {missing} / still lists unloaded {left}", 409, "reconcile incomplete"
            )
        if not self.state.ready:
            log.info("engine sync: ready; the engine holds %s", ", ".join(sorted(wanted)) or "no adapters")
        self.state.ready = True

    async def _folder(self, model_id: str, spec: AdapterSpec) -> Path:
        """The version's local folder, located once: s3:// is copied into cache_dir, the emptyDir
        the engine's container mounts at the same path, so the engine reads the path we send."""
        if model_id not in self.folders:
            self.folders[model_id] = await asyncio.to_thread(adapter_folder, spec.uri, self.config)
        return self.folders[model_id]

    async def _watch(self, model_id: str, spec: AdapterSpec) -> None:
        """Drift-monitor a version the engine serves; monitoring never fails the reconcile."""
        assert self.drift is not None
        try:
            folder = await self._folder(model_id, spec)
        except AdapterLoadError as err:
            log.warning("drift: %s not monitored: %s", model_id, err)
            self.unmonitored.add(model_id)
            return
        if not self.drift.load_reference(spec.name, spec.version, folder):
            self.unmonitored.add(model_id)

    async def _drain(self, model_id: str) -> None:
        """Wait (up to the engine timeout) for requests already sent to `model_id` to finish."""
        assert self.config.engine is not None
        deadline = asyncio.get_running_loop().time() + self.config.engine.timeout_s
        while self.in_flight[model_id] > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
