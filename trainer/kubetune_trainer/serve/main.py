"""`kubetune serve`: run the app under uvicorn; SIGTERM stops accepting, finishes in-flight work, exits."""

from __future__ import annotations

import logging
import signal
from typing import Any

import uvicorn

from kubetune_trainer.serve.app import create_app
from kubetune_trainer.serve.config import ServeConfig
from kubetune_trainer.serve.state import ServerState

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1


class DrainingServer(uvicorn.Server):
    """uvicorn already drains on SIGTERM (closes listeners, waits for open requests up to
    timeout_graceful_shutdown, then runs the lifespan shutdown that empties the batcher); this adds
    /readyz turning 503 at once, for anything still probing."""

    def __init__(self, config: uvicorn.Config, state: ServerState, tasks: list[ServerState]) -> None:
        super().__init__(config)
        self.state = state
        self.tasks = tasks
        for task in tasks:
            task.on_fatal = self.stop

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.state.draining = True
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals after shutdown; a finished drain is a clean exit (0).
            self._captured_signals.remove(sig)

    def stop(self) -> None:
        self.should_exit = True


def make_server(config: ServeConfig) -> DrainingServer:
    """The app and its uvicorn server, not yet started (tests run it in a thread)."""
    app = create_app(config)
    uv = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        timeout_graceful_shutdown=config.drain_timeout_s,
        log_level="info",
        access_log=False,
        lifespan="on",
    )
    return DrainingServer(uv, app.state.kubetune, app.state.kubetune_tasks)


def run_serve(config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT. 0 after a clean drain, 1 when the declared adapters failed to load."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make_server(config)
    server.run()
    return EXIT_STARTUP_FAILED if any(t.startup_error for t in server.tasks) else EXIT_OK
