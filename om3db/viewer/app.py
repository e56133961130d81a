"""The ``om3db view`` page: a viser server (three.js client served from the viser wheel) over a Database.

One worker thread owns the database (SQLite connections stay on one thread) and runs every job in
order; viser's callbacks only queue jobs. A search job is skipped when a newer one is queued behind
it, so typing stays live without a backlog.
"""

from __future__ import annotations

import contextlib
import errno
import io
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, Om3dbError
from .origin import guard
from .scene import CloudView, camera_for, downsample, highlight, point_size_for

AGGREGATIONS = ("mean", "max")


@dataclass(frozen=True)
class ViewerConfig:
    """Settings of the viewer page."""

    host: str = "127.0.0.1"
    """Interface to listen on (127.0.0.1: this machine only)."""
    port: int = 8080
    """TCP port; one in use is refused (never silently replaced by another)."""
    max_points: int = 200_000
    """Points of a scan sent to the browser at most (a fixed random subset of larger clouds)."""
    point_size: float | None = None
    """Point size in metres; None: from the cloud's extent and point count."""
    k: int = 10
    """Initial number of hits."""
    thumbnail: int = 128
    """Longest side of a crop thumbnail in the result list, pixels."""

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an integer in 0..65535, got {self.port!r}")
        for name in ("max_points", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def check_port(host: str, port: int) -> None:
    """Raise ConfigError when ``host:port`` cannot be bound (in use, or not an address of this machine)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{host}:{port} is already in use. Choose another with --port (or stop what listens there)"
            ) from exc
        raise ConfigError(
            f"{host}:{port} cannot be used ({exc.strerror}). Check --host: it must be an address of this machine "
            "(127.0.0.1, ::1, 0.0.0.0 for every interface, or one of its own addresses)"
        ) from exc
    except (socket.gaierror, OverflowError, UnicodeError, ValueError) as exc:  # not an address at all
        raise ConfigError(f"{host!r} is not an address this machine can listen on ({exc}). Check --host") from exc


class _Worker:
    """One thread that runs queued jobs in order."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="om3db-view-db", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, fut))
        return fut

    def call(self, fn: Callable):
        return self.submit(fn).result()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            fn, fut = item
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                fut.set_exception(exc)


class Viewer:
    """A running viewer: ``url``, ``stop()``; ``hits`` / ``highlighted`` / ``scan`` are what the page shows."""

    def __init__(self, db, config: ViewerConfig | None = None) -> None:
        self.config = config or ViewerConfig()
        check_port(self.config.host, self.config.port)
        self._worker = _Worker()
        self._db = None
        self._server = None
        self._box = None
        self._points = None
        self._lock = threading.Lock()
        self._latest = 0  # generation of the newest search request
        self._image: np.ndarray | None = None
        self._scans_cache: dict[str, object] = {}
        self._cloud: CloudView | None = None
        self.scan: str | None = None
        self.hits: list = []
        self.highlighted = None
        self.last_error: str | None = None
        self.refused: list[str] = []
        """Why each refused WebSocket client was refused (another page's origin, a foreign host name)."""
        self.search_seconds = self.shown_seconds = float("nan")
        try:
            self._db = self._worker.call(lambda: _open(db))
            self._scan_names = [s.name for s in self._worker.call(self._db.scans)]
            self._start_server()
            if self._scan_names:
                self._worker.call(lambda: self._guarded(self._show_scan, self._scan_names[0]))
        except BaseException:
            self.stop()
            raise
        # load the query encoder now, off the page's path, so the first query is fast
        self._worker.submit(self._warm_up)

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.get_port()

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def stop(self) -> None:
        """Stop serving and close the database."""
        if self._server is not None:
            with contextlib.redirect_stdout(io.StringIO()):  # viser prints "Server stopped"
                self._server.stop()
            self._server = None
        if self._db is not None:
            db, self._db = self._db, None
            self._worker.call(db.close)
        self._worker.stop()

    def __enter__(self) -> Viewer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until every queued job has run (tests, scripts)."""
        self._worker.submit(lambda: None).result(timeout=timeout)

    # -- the page ------------------------------------------------------------------------------------

    def _start_server(self) -> None:
        try:
            import viser
        except ImportError as exc:
            raise ConfigError("the viewer needs the viser package: pip install 'om3db[view]'") from exc

        cfg = self.config
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints a banner; the CLI says the URL
            server = viser.ViserServer(host=cfg.host, port=cfg.port, label="om3db", verbose=False)
        self._server = server
        guard(server, cfg.host, self.refused)  # before the page has anything to send
        if server.get_port() != cfg.port and cfg.port != 0:  # viser moves to the next port when taken
            raise ConfigError(f"{cfg.host}:{cfg.port} is already in use. Choose another with --port")
        server.gui.configure_theme(show_share_button=False, control_width="large")
        server.scene.set_up_direction("+z")
        gui = server.gui
        self._scan_pick = gui.add_dropdown("Scan", options=tuple(self._scan_names) or ("(no scans)",))
        self._text = gui.add_text("Query", initial_value="", hint="Type what to look for; results follow as you type")
        self._upload = gui.add_upload_button("Search by image", hint="A PNG or JPEG photo of the object")
        self._k = gui.add_number("k", initial_value=cfg.k, min=1, max=100, step=1)
        self._agg = gui.add_dropdown("Aggregation", options=AGGREGATIONS, initial_value="mean")
        self._min_score = gui.add_number(
            "Min score", initial_value=-1.0, min=-1.0, max=1.0, step=0.01, hint="-1: no minimum (cosine similarity)"
        )
        self._status = gui.add_markdown("Type a query or upload an image.")
        self._selected = gui.add_markdown("Highlighted: none")
        self._results = gui.add_folder("Results")
        self._rows: list = []

        self._scan_pick.on_update(
            lambda _e: self._worker.submit(lambda: self._guarded(self._show_scan, self._scan_pick.value))
        )
        self._text.on_update(lambda _e: self._request(text=self._text.value))
        for handle in (self._k, self._agg, self._min_score):
            handle.on_update(lambda _e: self._request())
        self._upload.on_upload(lambda _e: self._request(upload=self._upload.value))

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.last_error = text if error else None
        self._status.content = f"**Error:** {text}" if error else text

    # -- jobs (run on the worker thread) ---------------------------------------------------------------

    def _guarded(self, fn, *args, **kwargs) -> None:
        """Run a page action; an om3db error (a scan folder moved away, say) becomes the status line."""
        try:
            fn(*args, **kwargs)
        except (Om3dbError, OSError) as exc:
            self._set_status(str(exc), error=True)

    def _warm_up(self) -> None:
        with contextlib.suppress(Om3dbError):
            if self._scan_names:
                self._db.query(text="object").limit(1).to_list()

    def _request(self, *, text: str | None = None, upload=None) -> None:
        """Queue a search with the page's current settings (a newer request supersedes it)."""
        with self._lock:
            self._latest += 1
            generation = self._latest
        if text is not None:
            self._image = None
        self._worker.submit(lambda: self._search(generation, upload))

    def _search(self, generation: int, upload) -> None:
        if upload is not None:
            try:
                self._image = _decode_image(upload.name, upload.content)
            except ConfigError as exc:
                self._image = None
                self._set_status(str(exc), error=True)
                return
        if generation != self._latest:  # a newer request is queued: let it run instead
            return
        text = self._text.value.strip()
        if self._image is None and not text:
            self._show_hits([])
            self._set_status("Type a query or upload an image: the query is empty.", error=True)
            return
        started = time.perf_counter()
        try:
            k = int(self._k.value)
            min_score = float(self._min_score.value)
            query = self._db.query(text=None if self._image is not None else text, image=self._image)
            query = query.where(min_score=None if min_score <= -1 else min_score)
            hits = query.limit(k).aggregate(self._agg.value).to_list()
        except Om3dbError as exc:
            self._show_hits([])
            self._set_status(str(exc), error=True)
            return
        self.search_seconds = time.perf_counter() - started
        self._show_hits(hits)
        if hits:
            try:
                self._select(hits[0], client=None)
            except (Om3dbError, OSError) as exc:
                self._set_status(str(exc), error=True)
                return
        self.shown_seconds = time.perf_counter() - started
        what = "the uploaded image" if self._image is not None else repr(text)
        self._set_status(
            f"{len(hits)} hit(s) for {what} (search {self.search_seconds:.2f} s, shown {self.shown_seconds:.2f} s)."
        )

    def _show_hits(self, hits: list) -> None:
        for handle in self._rows:
            handle.remove()
        self._rows = []
        self.hits = list(hits)
        with self._results:
            for rank, hit in enumerate(hits, 1):
                row = self._server.gui.add_button(f"{rank}. {hit.score:.4f} · {hit.scan} · #{hit.instance_id}")
                row.on_click(
                    lambda e, h=hit: self._worker.submit(lambda: self._guarded(self._select, h, client=e.client))
                )
                self._rows.append(row)
                thumb = self._thumbnail(hit)
                if thumb is not None:
                    self._rows.append(self._server.gui.add_image(thumb, format="jpeg"))
        if not hits:
            self.highlighted = None
            self._selected.content = "Highlighted: none"
            if self._cloud is not None:
                self._points.colors = highlight(self._cloud, [])
            if self._box is not None:
                self._box.remove()
                self._box = None

    def _select(self, hit, *, client) -> None:
        """Show a hit: switch to its scan if needed, paint the hits, box this one, fly to it."""
        if hit.scan != self.scan:
            self._show_scan(hit.scan)
        self.highlighted = hit
        self._selected.content = f"Highlighted: #{hit.instance_id} in {hit.scan} (score {hit.score:.4f})"
        self._paint()
        lo, hi = np.asarray(hit.bbox_min, dtype=np.float32), np.asarray(hit.bbox_max, dtype=np.float32)
        if self._box is not None:
            self._box.remove()
        self._box = self._server.scene.add_box(
            "/om3db/hit_box", color=(255, 40, 200), dimensions=tuple(np.maximum(hi - lo, 1e-3)), position=(lo + hi) / 2,
            wireframe=True,
        )  # fmt: skip
        position, look_at = camera_for(lo, hi)
        clients = [client] if client is not None else list(self._server.get_clients().values())
        for c in clients:
            with c.atomic():
                c.camera.position = position
                c.camera.look_at = look_at

    def _paint(self) -> None:
        if self._cloud is None:
            return
        here = [h for h in self.hits if h.scan == self.scan]
        points = {h.instance_id: self._db.instance(h.instance_id).point_indices for h in here}
        self._points.colors = highlight(self._cloud, [(points[h.instance_id], h.score) for h in here])

    def _show_scan(self, name: str) -> None:
        if name not in self._scan_names or name == self.scan:
            return
        scan = self._read_scan(name)
        self._cloud = downsample(name, scan.points, scan.colors, max_points=self.config.max_points)
        self.scan = name
        if self._box is not None:
            self._box.remove()
            self._box = None
        self._points = self._server.scene.add_point_cloud(
            "/om3db/scan",
            points=self._cloud.points,
            colors=self._cloud.colors,
            point_size=self.config.point_size or point_size_for(self._cloud.points),
        )
        if self._scan_pick.value != name:
            self._scan_pick.value = name
        self._paint()
        lo, hi = self._cloud.points.min(axis=0), self._cloud.points.max(axis=0)
        position, look_at = camera_for(lo, hi)
        self._server.initial_camera.position = tuple(position)
        self._server.initial_camera.look_at = tuple(look_at)
        for c in self._server.get_clients().values():
            with c.atomic():
                c.camera.position = position
                c.camera.look_at = look_at

    def _read_scan(self, name: str):
        from pathlib import Path

        from ..database import read_ingested_scan

        if name not in self._scans_cache:
            info = next(s for s in self._db.scans() if s.name == name)
            # as reindex / export re-read it: depth "auto" and the stored pose_scale, so 3D Scanner App and
            # depth-less scaled nerfstudio captures show too
            self._scans_cache[name] = read_ingested_scan(info, Path(self._db.path) / "fused")
        return self._scans_cache[name]

    def _thumbnail(self, hit) -> np.ndarray | None:
        if hit.frame_id is None or hit.crop_box is None:
            return None
        from PIL import Image

        try:
            image = self._read_scan(hit.scan).frame(hit.frame_id).color()
        except (Om3dbError, OSError):  # (frames decode through the scan's typed errors)
            return None
        x0, y0, x1, y1 = hit.crop_box
        crop = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
        crop.thumbnail((self.config.thumbnail, self.config.thumbnail))
        return np.asarray(crop.convert("RGB"))


def _open(db):
    from ..database import connect

    return connect(db, create=False)


def _decode_image(name: str, content: bytes) -> np.ndarray:
    """The uploaded file as an (H, W, 3) uint8 array, or ConfigError saying it is not an image (or one over
    om3db's pixel limit, checked from its header before it is decoded, as for ``search --image``)."""
    from PIL import Image

    from ..images import DECODE_ERRORS, open_image

    def refuse(label, problem, fix):
        return ConfigError(f"{label}: {problem}. {fix or 'Upload a PNG or JPEG'}")

    img = open_image(io.BytesIO(content), name=name, error=refuse)
    try:
        with img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except (*DECODE_ERRORS, Image.DecompressionBombError) as exc:
        raise ConfigError(
            f"{name}: not an image this page can read ({type(exc).__name__}). Upload a PNG or JPEG"
        ) from exc


def start_viewer(db=None, *, config: ViewerConfig | None = None) -> Viewer:
    """Open the database (never creating one) and serve the viewer page; returns the running :class:`Viewer`.

    Raises NotFoundError for a folder without a database and ConfigError for a port in use."""
    return Viewer(db, config)
