"""``om3db view`` in a real browser: Debian's chromium, headless, driven by playwright (no browser download).

The page must show exactly what ``Database.search`` returns, highlight the top hit, draw a non-blank
scene, load nothing from anywhere but the local server, and survive bad input.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from om3db_cli.main import main

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# flags from the machine notes: no sandbox as root, no GPU, and no background calls to Google
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROW = re.compile(r"^(\d+)\. (-?\d+\.\d{4}) · (\S+) · #(\d+)$")

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def view_db(tmp_path_factory, synth_root, tiny_siglip_dir, tiny_dinov2_dir) -> Path:
    db = tmp_path_factory.mktemp("view") / "db"
    code = main(
        ["ingest", str(synth_root), "--db", str(db), "--siglip", str(tiny_siglip_dir), "--dinov2", str(tiny_dinov2_dir),
         "--frame-step", "5", "--json"]
    )  # fmt: skip
    assert code == 0
    return db


@pytest.fixture(scope="module")
def viewer(view_db):
    from om3db.viewer import ViewerConfig, start_viewer

    started = time.perf_counter()
    v = start_viewer(view_db, config=ViewerConfig(port=0, max_points=20_000))
    v.startup_seconds = time.perf_counter() - started
    v.wait_idle(timeout=120)  # the encoder warm-up
    yield v
    v.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, viewer):
    context = browser.new_context(viewport={"width": 960, "height": 600})
    pg = context.new_page()
    pg.requests = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.goto(viewer.url)
    pg.wait_for_function("document.body.innerText.includes('Results')", timeout=30_000)
    yield pg
    context.close()


def _field(pg, label: str):
    """The input next to a viser GUI label (viser's labels are not tied to their inputs by id)."""
    return pg.locator(
        f"xpath=//label[text()='{label}']/ancestor::div[contains(@class,'mantine-Flex-root')][1]//*[self::input or self::select]"
    ).first


def _wait_text(pg, text: str, timeout: float = 15_000) -> None:
    pg.wait_for_function("t => document.body.innerText.includes(t)", arg=text, timeout=timeout)


def _rows(pg) -> list[tuple[int, float, str, int]]:
    rows = []
    for label in pg.locator("button .mantine-Button-label").all_inner_texts():
        m = ROW.match(label.strip())
        if m:
            rows.append((int(m[1]), float(m[2]), m[3], int(m[4])))
    return rows


def _status(pg) -> str:
    return pg.locator("p", has_text=re.compile(r"hit\(s\) for|Error:|Type a query")).first.inner_text()


def _search(pg, viewer, text: str) -> None:
    before = viewer.hits, viewer.last_error
    _field(pg, "Query").fill(text)
    deadline = time.time() + 30
    while (viewer.hits, viewer.last_error) == before and time.time() < deadline:
        time.sleep(0.02)
    viewer.wait_idle()
    _wait_text(pg, f"hit(s) for '{text}'")


def test_page_shows_database_search_and_highlights_top_hit(page, viewer, view_db, tmp_path):
    import om3db

    assert viewer.startup_seconds < 5, viewer.startup_seconds
    started = time.perf_counter()
    _search(page, viewer, "red object")
    answered = time.perf_counter() - started
    with om3db.connect(view_db, create=False) as db:
        expected = db.search(text="red object", k=10)
    assert expected
    page.wait_for_function(
        "n => document.querySelectorAll('button .mantine-Button-label').length >= n", arg=len(expected)
    )
    shown = _rows(page)
    assert [(r[2], r[3]) for r in shown] == [(h.scan, h.instance_id) for h in expected]
    assert [r[1] for r in shown] == [round(h.score, 4) for h in expected]
    assert [r[0] for r in shown] == list(range(1, len(expected) + 1))
    top = expected[0]
    _wait_text(page, f"Highlighted: #{top.instance_id} in {top.scan}")
    assert viewer.highlighted.instance_id == top.instance_id and viewer.scan == top.scan
    assert viewer.search_seconds < 1.0, viewer.search_seconds
    assert answered < 10, answered  # page round trip on 2 cores with software WebGL

    time.sleep(1.0)  # let the software renderer draw the painted cloud
    shot = tmp_path / "viewer_canvas.png"
    page.locator("canvas").first.screenshot(path=str(shot))
    page.screenshot(path=str(tmp_path / "viewer_page.png"))
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) >= 100, "the canvas looks blank"
    assert all(u.startswith(viewer.url.rstrip("/")) or u.startswith(("blob:", "data:")) for u in page.requests), [
        u for u in page.requests if "127.0.0.1" not in u
    ]


def test_row_of_another_scan_switches_scan_and_max_aggregation(page, viewer, view_db):
    import om3db

    _search(page, viewer, "blue object")
    other = next(h for h in viewer.hits if h.scan != viewer.scan)
    rank = viewer.hits.index(other) + 1
    page.locator("button", has_text=re.compile(rf"^{rank}\. ")).first.click()
    _wait_text(page, f"Highlighted: #{other.instance_id} in {other.scan}")
    viewer.wait_idle()
    assert viewer.scan == other.scan and viewer.highlighted.instance_id == other.instance_id

    _field(page, "Aggregation").click()  # a Mantine combobox: open it, pick the option
    page.get_by_role("option", name="max").click()
    deadline = time.time() + 30
    with om3db.connect(view_db, create=False) as db:
        expected = db.query(text="blue object").limit(10).aggregate("max").to_list()
    want = [(h.scan, h.instance_id, round(h.score, 4)) for h in expected]
    while time.time() < deadline and [(r[2], r[3], r[1]) for r in _rows(page)] != want:
        time.sleep(0.1)
    assert [(r[2], r[3], r[1]) for r in _rows(page)] == want


def test_bad_input_is_a_message_and_the_page_keeps_serving(page, viewer, tmp_path):
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not an image at all")
    page.locator("input[type=file]").first.set_input_files(str(junk))
    _wait_text(page, "notes.png: not a readable image")
    assert "Upload a PNG or JPEG" in _status(page)

    _field(page, "Query").fill("   ")
    _wait_text(page, "the query is empty")
    assert viewer.hits == []

    _search(page, viewer, "green object")  # still serving
    assert _rows(page) and viewer.last_error is None


def test_image_upload_searches_dinov2(page, viewer, view_db, tmp_path):
    from PIL import Image

    import om3db

    photo = tmp_path / "query.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(photo)
    page.locator("input[type=file]").first.set_input_files(str(photo))
    _wait_text(page, "hit(s) for the uploaded image")
    aggregation = _field(page, "Aggregation").input_value()  # the page's settings carry over between tests
    with om3db.connect(view_db, create=False) as db:
        expected = db.search(image=np.asarray(Image.open(photo).convert("RGB")), k=10, aggregation=aggregation)
    assert [(r[2], r[3]) for r in _rows(page)] == [(h.scan, h.instance_id) for h in expected]


# -- the CLI and the pieces, without a browser -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_view_missing_database(tmp_path, capsys):
    code = main(["view", "--db", str(tmp_path / "nothing"), "--port", str(_free_port()), "--no-open"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "no om3db database" in err and "Traceback" not in err


def test_cli_view_port_in_use(view_db, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["view", "--db", str(view_db), "--port", str(port)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"Error: 127.0.0.1:{port} is already in use. Choose another with --port" in err


def test_decode_image_refuses_non_images():
    from om3db.errors import ConfigError
    from om3db.viewer.app import _decode_image

    with pytest.raises(ConfigError, match="x.txt: not a readable image"):
        _decode_image("x.txt", b"hello")


def test_decode_image_refuses_an_upload_over_the_pixel_limit_before_decoding_it():
    """A 9000x9000 PNG compresses to ~80 KB but decodes to 243 MB: refused from its header, like
    ``search --image``; a small one decodes to (H, W, 3) uint8."""
    import io

    from PIL import Image

    from om3db.errors import ConfigError
    from om3db.images import MAX_IMAGE_PIXELS
    from om3db.viewer.app import _decode_image

    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG", optimize=True)
    assert len(buf.getvalue()) < 2_000_000
    with pytest.raises(ConfigError, match=f"bomb.png: image is {side}x{side} pixels, more than om3db's limit"):
        _decode_image("bomb.png", buf.getvalue())
    small = io.BytesIO()
    Image.new("RGBA", (5, 3), (10, 20, 30, 255)).save(small, format="PNG")
    array = _decode_image("ok.png", small.getvalue())
    assert array.shape == (3, 5, 3) and array.dtype == np.uint8 and (array == [10, 20, 30]).all()


def test_scene_downsample_and_highlight():
    from om3db.viewer.scene import camera_for, downsample, heat, highlight

    rng = np.random.default_rng(0)
    points = rng.random((1000, 3)).astype(np.float32)
    colors = rng.integers(0, 255, (1000, 3), dtype=np.uint8)
    cloud = downsample("s", points, colors, max_points=300)
    assert len(cloud.points) == 300 and (cloud.kept >= 0).sum() == 300
    kept = np.flatnonzero(cloud.kept >= 0)
    assert np.array_equal(cloud.points[cloud.kept[kept]], points[kept])
    painted = highlight(cloud, [(np.arange(0, 500), 0.9), (np.arange(400, 1000), 0.1)])
    rows_best = cloud.kept[np.arange(0, 500)]
    assert (painted[rows_best[rows_best >= 0]] == heat(1.0)).all()  # the best is drawn last, hottest
    assert downsample("s", points, colors, max_points=300).kept.tolist() == cloud.kept.tolist()  # same subset
    pos, look = camera_for((0, 0, 0), (1, 1, 1))
    assert np.allclose(look, 0.5) and np.linalg.norm(pos - look) > 1


def test_scan_that_cannot_be_read_is_a_message(view_db, monkeypatch):
    """A scan folder moved away after ingest: the viewer still serves and says which scan and why."""
    import om3db.scan
    from om3db.errors import ScanError
    from om3db.viewer import ViewerConfig, start_viewer

    def gone(path, **_kw):
        raise ScanError(path, "no such folder", "Ingest it again from where it is now")

    monkeypatch.setattr(om3db.scan, "read_scan", gone)
    with start_viewer(view_db, config=ViewerConfig(port=0)) as v:
        assert v.scan is None and "no such folder" in v.last_error
        assert v.url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize(
    ("headers", "bind", "refused"),
    [
        ({}, "127.0.0.1", None),  # not a browser
        ({"Origin": "http://127.0.0.1:8080", "Host": "127.0.0.1:8080"}, "127.0.0.1", None),
        ({"Origin": "http://localhost:8080", "Host": "localhost:8080"}, "127.0.0.1", None),
        ({"Origin": "http://[::1]:8080", "Host": "[::1]:8080"}, "::1", None),
        ({"Origin": "http://lab-pc:8080", "Host": "lab-pc:8080"}, "0.0.0.0", None),  # bound to all: any name
        ({"Origin": "http://evil.example.com", "Host": "127.0.0.1:8080"}, "127.0.0.1", "origin"),
        ({"Origin": "null", "Host": "127.0.0.1:8080"}, "127.0.0.1", "origin"),  # a sandboxed frame / file page
        ({"Origin": "http://127.0.0.1:9999", "Host": "127.0.0.1:8080"}, "127.0.0.1", "origin"),  # another port
        ({"Origin": "http://127.0.0.1:8080"}, "127.0.0.1", "origin"),  # no Host
        ({"Origin": "http://evil.example.com:8080", "Host": "evil.example.com:8080"}, "127.0.0.1", "host"),
    ],
)
def test_origin_rule(headers, bind, refused):
    from om3db.viewer.origin import origin_problem

    got = origin_problem(headers, bind)
    assert (got is None) if refused is None else got.startswith(refused), got


def test_a_foreign_page_cannot_read_the_viewer_over_its_websocket(viewer):
    """Another web page (its Origin is not the viewer's) is closed with 1008 before it is sent anything;
    a client from the viewer's own origin is sent the page's state (the shown scan's name is in it)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import viser
    import websockets

    url = f"ws://127.0.0.1:{viewer.port}/"
    protocol = [f"viser-v{viser.__version__}"]

    async def read(origin: str) -> tuple[bytes, int | None]:
        got, code = b"", None
        async with websockets.connect(url, origin=origin, subprotocols=protocol, max_size=None) as ws:
            try:
                while True:
                    msg = await asyncio.wait_for(ws.recv(), timeout=2)
                    got += msg if isinstance(msg, bytes) else msg.encode()
            except websockets.exceptions.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
            except TimeoutError:
                pass
        return got, code

    def run(origin: str):  # in a thread of its own: playwright's sync API keeps a loop in this one
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, read(origin)).result(timeout=60)

    before = len(viewer.refused)
    foreign, code = run("http://evil.example.com")
    assert code == 1008 and foreign == b""
    assert viewer.refused[before:] == [
        f"origin 'http://evil.example.com' is not this viewer's page (127.0.0.1:{viewer.port})"
    ]
    own, code = run(f"http://127.0.0.1:{viewer.port}")
    assert code is None
    zstd = pytest.importorskip("zstandard")  # viser compresses its messages (a viser dependency)
    at = own.find(b"(\xb5/\xfd")  # the first zstd frame
    assert at >= 0 and viewer.scan.encode() in zstd.ZstdDecompressor().decompressobj().decompress(own[at:])
    assert len(viewer.refused) == before + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_points": 0}, "max_points must be an integer >= 1, got 0"),
        ({"k": 2.5}, "k must be an integer >= 1, got 2.5"),
        ({"port": 70000}, "port must be an integer in 0..65535, got 70000"),
    ],
)
def test_viewer_config_names_the_bad_field(kwargs, message):
    from om3db.errors import ConfigError
    from om3db.viewer import ViewerConfig

    with pytest.raises(ConfigError, match=re.escape(message)):
        ViewerConfig(**kwargs)


@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid", "192.0.2.1"])
def test_a_host_that_is_not_this_machines_address_names_host_not_port(host):
    from om3db.errors import ConfigError
    from om3db.viewer.app import check_port

    with pytest.raises(ConfigError) as info:
        check_port(host, 0)
    assert "--host" in str(info.value) and "--port" not in str(info.value), info.value
