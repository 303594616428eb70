"""Run the take browser: uvicorn in a background thread, so the CLI, the bridge and tests share one way in.

``UiServer(project, engine=...)`` builds the app (:func:`dr2studio.ui.app.create_app`) and its action
queue (:class:`dr2studio.ui.actions.UiJobs`) and serves it on ``host:port`` (127.0.0.1 by default; port 0
picks a free one, :attr:`UiServer.port` says which). :meth:`close` stops the server and the queue; the
engine belongs to the caller.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from dr2studio.requests import DEFAULT_CFG_STRENGTH, DEFAULT_STEPS
from dr2studio.ui.actions import UiJobs
from dr2studio.ui.project import ProjectView

log = logging.getLogger(__name__)

__all__ = ["UiServer", "DEFAULT_UI_PORT", "block_seconds_of", "require_web_stack", "follow_bridge"]

DEFAULT_UI_PORT = 7180
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def require_web_stack() -> None:
    """Fail with the fix when the web packages are missing (they come with the ``ui`` extra)."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"the take browser needs starlette and uvicorn ({exc.name} is missing): "
                           "pip install 'dr2studio[ui]'") from exc


def block_seconds_of(engine: Any) -> float | None:
    """The model's block length in seconds, when the engine runs a Studio in this process."""
    studio = getattr(engine, "studio", None)
    try:
        return float(studio.block_size) / float(studio.frame_rate) if studio is not None else None
    except (AttributeError, TypeError, ZeroDivisionError):
        return None


class UiServer:
    """The page over ``project`` (a folder, or a callable giving the current :class:`ProjectView`)."""

    def __init__(self, project: str | Path | Callable[[], ProjectView], *, engine: Any = None,
                 host: str = "127.0.0.1", port: int = DEFAULT_UI_PORT, steps: int = DEFAULT_STEPS,
                 cfg_strength: float = DEFAULT_CFG_STRENGTH, max_pending: int = 4) -> None:
        require_web_stack()
        import uvicorn

        from dr2studio.ui.app import create_app

        source: Callable[[], ProjectView]
        if callable(project):
            source = project
        else:
            view = ProjectView(project)
            source = lambda: view  # noqa: E731
        self.engine = engine
        blocks = block_seconds_of(engine)
        self.jobs = UiJobs(engine, source, steps=steps, cfg_strength=cfg_strength, block_seconds=blocks,
                           max_pending=max_pending) if engine is not None else None
        hosts = ["*"] if host not in _LOOPBACK else ["127.0.0.1", "localhost"]
        name = engine.describe() if engine is not None and hasattr(engine, "describe") else None
        self.app = create_app(source, jobs=self.jobs, block_seconds=blocks, allowed_hosts=hosts, engine_name=name)
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dr2-ui-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise OSError(f"the take browser could not listen on {host}:{port} (in use, or not an address here)")
            time.sleep(0.02)
        sock = self._server.servers[0].sockets[0]
        self.host, self.port = host, int(sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10.0)
        if self.jobs is not None:
            self.jobs.close()

    def __enter__(self) -> "UiServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def follow_bridge(bridge: Any, fallback: str | Path | None = None) -> Callable[[], ProjectView]:
    """The project of ``bridge``'s open session (else ``fallback``, the bridge's ``--project``), looked up
    on every request, so the page follows the DAW from project to project."""
    def current() -> ProjectView:
        session = getattr(bridge, "session", None)
        folder = session.project if session is not None else fallback
        if folder is None:
            from dr2studio.ui.project import UiError

            raise UiError("no project is open in the bridge yet (send /dr2/session/open, or start it with --project)", 409)
        return ProjectView(folder)

    return current
