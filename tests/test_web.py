"""The click-to-segment page (web/) in a real browser, in front of the real Triton.

The page is served as users get it from ``serve_local.py --web``: ``WebProxy`` runs
deploy/nginx/web.conf (the compose ``web`` service's configuration) with Debian's nginx, in
front of the session's shared embedded Triton. Debian's headless Chromium, driven by Selenium
through Debian's chromedriver, opens a real photo, and clicks, right-clicks and drags with
WebDriver's input actions. Every mask the page draws is read back from its canvas
(``getImageData``) and compared pixel for pixel with the server's mask for the same prompts,
asked by the Python client (``Sam2Client.session``); so are the IoU it shows and the PNG it
downloads. Also: stale requests are cancelled, a session the server lost is started again, a
server error is shown in words; ``serve_local.py --web`` serves the page and stops nginx with
Triton; the compose ``web`` service mounts what the proxy needs.

The screenshot README shows is saved to outputs/web/page.png (git-ignored) by
``test_page_segments_like_the_python_client``; docs/web_page.png is a copy.
"""

from __future__ import annotations

import base64
import json
import math
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import ROOT, SCRIPTS, run_script
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from sam2_triton.client import Sam2Client
from sam2_triton.client.images import decode_image
from sam2_triton.model_config import SESSION
from sam2_triton.models import UserError
from sam2_triton.server import free_port
from sam2_triton.web_proxy import NGINX_DIR, WEB_DIR, WebProxy

SCREENSHOT = ROOT / "outputs" / "web" / "page.png"
COMMITTED_SCREENSHOT = ROOT / "docs" / "web_page.png"
#: The mask layer's colour in web/app.js (MASK_RGBA): opaque, so read back exactly.
MASK_RGB = (30, 144, 255)
#: Where the main test clicks and drags, in pixels of chelsea (451 x 300).
FOREGROUND, BACKGROUND = (170, 130), (330, 80)
BOX_FROM, BOX_TO = (80, 30), (340, 270)

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=900,760",
)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(triton_server, tmp_path_factory):
    """serve_local's web proxy (nginx with deploy/nginx/web.conf) in front of the shared
    server. Attributes: ``url``, ``port``."""
    log = tmp_path_factory.mktemp("web") / "nginx.log"
    proxy = WebProxy(triton_server.http_url, free_port())
    with open(log, "w") as out:
        proxy.start(stdout=out, stderr=out)
        try:
            yield proxy
        finally:
            proxy.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium, headless, with a profile of its own and downloads into
    ``browser.downloads``."""
    import shutil

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail(
            "chromium and chromium-driver are not installed: bash scripts/ci_system_deps.sh"
        )
    workdir = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={workdir / 'profile'}"):
        options.add_argument(arg)
    service = Service(chromedriver, log_output=str(workdir / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.downloads = workdir / "downloads"
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(driver.downloads)},
        )
        yield driver
        # Leaving the page ends its session (pagehide): no sequence is left open on the server.
        driver.get("about:blank")
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def photo(photos, tmp_path_factory) -> Path:
    """A real photo as a JPEG file: the page and the Python client send its bytes."""
    path = tmp_path_factory.mktemp("photo") / "chelsea.jpg"
    Image.fromarray(photos["chelsea"]).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def reference(triton_server, photo):
    """A Python client session on the same photo: the server's masks for any prompt."""
    with Sam2Client(triton_server.http_url) as client, client.session(photo) as session:
        yield session


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------


def app(browser, name: str) -> str:
    """A data-* attribute of #app (state, requests, cancelled, restarts, session-id)."""
    return browser.find_element(By.ID, "app").get_attribute(f"data-{name}")


def wait_until(browser, condition, timeout: float = 90, what: str = "the page") -> None:
    def check(_driver):
        return condition()

    try:
        WebDriverWait(browser, timeout, poll_frequency=0.05).until(check)
    except Exception as e:  # noqa: BLE001 - say what the page shows
        status = browser.find_element(By.ID, "status").text
        error = browser.find_element(By.ID, "error").text
        raise AssertionError(
            f"{what}: timed out in state {app(browser, 'state')!r}; status {status!r}, "
            f"error {error!r}"
        ) from e


def answered(browser, requests_before: int) -> None:
    """Wait until a prompt request sent after ``requests_before`` has been answered."""
    wait_until(
        browser,
        lambda: int(app(browser, "requests")) > requests_before
        and app(browser, "state") in ("ready", "error"),
    )


def open_photo(browser, web, photo: Path) -> None:
    browser.get(web.url)
    wait_until(browser, lambda: app(browser, "state") == "empty")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait_until(browser, lambda: app(browser, "state") == "ready", what="opening the photo")
    assert not browser.find_element(By.ID, "error").is_displayed()


def at(browser, pixel: tuple[int, int]) -> ActionChains:
    """Actions with the pointer over ``pixel`` of the image. The canvas shows the photo at
    its own size, one CSS pixel per image pixel; its box may start at a fraction of a pixel,
    and the pointer moves to whole viewport pixels: the first one inside ``pixel``."""
    rect = browser.execute_script(
        "const r = document.getElementById('marks').getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height];"
    )
    assert rect[2:] == [451, 300], rect
    actions = ActionChains(browser)
    actions.w3c_actions.pointer_action.move_to_location(
        math.ceil(rect[0] + pixel[0]), math.ceil(rect[1] + pixel[1])
    )
    return actions


READ_MASK = """
const canvas = document.getElementById("mask");
const rgba = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
const [r, g, b] = arguments[0];
const inside = new Uint8Array(canvas.width * canvas.height);
let other = 0;
for (let i = 0; i < inside.length; i++) {
  const p = 4 * i;
  if (rgba[p] === r && rgba[p + 1] === g && rgba[p + 2] === b && rgba[p + 3] === 255) inside[i] = 1;
  else if (rgba[p] || rgba[p + 1] || rgba[p + 2] || rgba[p + 3]) other++;
}
let text = "";
for (let i = 0; i < inside.length; i += 8192) {
  text += String.fromCharCode(...inside.subarray(i, i + 8192));
}
return {width: canvas.width, height: canvas.height, bits: btoa(text), other,
        prompt: canvas.dataset.prompt, iou: canvas.dataset.iou};
"""


@dataclass
class Shown:
    """What the mask layer shows: the mask read back from the canvas, and its prompt."""

    mask: np.ndarray
    points: list[list[int]]
    box: list[int] | None
    multimask: bool
    iou: list[float]


def shown(browser) -> Shown:
    found = browser.execute_script(READ_MASK, list(MASK_RGB))
    assert found["other"] == 0, "the mask layer holds pixels of another colour"
    bits = np.frombuffer(base64.b64decode(found["bits"]), np.uint8)
    prompt = json.loads(found["prompt"])
    return Shown(
        mask=bits.reshape(found["height"], found["width"]).astype(bool),
        points=prompt["points"],
        box=prompt["box"],
        multimask=prompt["multimask"],
        iou=json.loads(found["iou"]),
    )


def server_answer(reference, page: Shown):
    """The server's prediction, through the Python client, for the prompt the page shows."""
    return reference.predict(
        points=[p[:2] for p in page.points] or None,
        labels=[p[2] for p in page.points] or None,
        box=page.box,
        multimask=page.multimask,
        outputs=("masks", "iou_predictions", "mask_png"),
    )


def assert_page_shows_the_server_mask(browser, reference):
    """The canvas equals the server's best mask for the page's prompt, pixel for pixel, and
    the IoU the page got equals the client's. Returns (what the page shows, the answer)."""
    page = shown(browser)
    pred = server_answer(reference, page)
    assert page.mask.shape == pred.masks.shape[1:]
    mismatched = int((page.mask != pred.best_mask).sum())
    assert mismatched == 0, f"{mismatched} pixels differ from the server's mask"
    np.testing.assert_allclose(page.iou, pred.iou_predictions, rtol=1e-6)
    assert page.mask.any() or not pred.best_mask.any()
    return page, pred


def save_screenshot(browser) -> None:
    """README's screenshot: the page down to its prompt list, in 256 colours (small)."""
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    raw = SCREENSHOT.with_suffix(".raw.png")
    browser.save_screenshot(str(raw))
    bottom = browser.execute_script(
        "return document.getElementById('prompts').getBoundingClientRect().bottom"
    )
    image = Image.open(raw).convert("RGB")
    image = image.crop((0, 0, image.width, min(image.height, math.ceil(bottom) + 12)))
    image.quantize(256, method=Image.Quantize.FASTOCTREE).save(SCREENSHOT, optimize=True)
    raw.unlink()


# --------------------------------------------------------------------------------------------
# tests: the page
# --------------------------------------------------------------------------------------------


def test_page_segments_like_the_python_client(browser, web, photo, reference):
    """Foreground click, background click, box drag: each mask drawn equals the server's
    for the same prompts; undo restores the previous mask from the page's cache; multimask
    shows the best of three; the downloaded PNG is the server's mask_png."""
    open_photo(browser, web, photo)
    assert browser.find_element(By.ID, "image").size == {"width": 451, "height": 300}

    before = int(app(browser, "requests"))
    at(browser, FOREGROUND).click().perform()
    answered(browser, before)
    page, _ = assert_page_shows_the_server_mask(browser, reference)
    assert page.points == [[*FOREGROUND, 1]] and page.box is None

    before = int(app(browser, "requests"))
    at(browser, BACKGROUND).context_click().perform()
    answered(browser, before)
    page, two_clicks = assert_page_shows_the_server_mask(browser, reference)
    assert page.points == [[*FOREGROUND, 1], [*BACKGROUND, 0]]
    two_points = page

    before = int(app(browser, "requests"))
    dx, dy = BOX_TO[0] - BOX_FROM[0], BOX_TO[1] - BOX_FROM[1]
    drag = at(browser, BOX_FROM).click_and_hold()
    drag.move_by_offset(dx // 2, dy // 2).move_by_offset(dx - dx // 2, dy - dy // 2).release()
    drag.perform()
    answered(browser, before)
    page, _ = assert_page_shows_the_server_mask(browser, reference)
    assert page.points == two_points.points
    assert page.box == [*BOX_FROM, *BOX_TO]
    status = browser.find_element(By.ID, "status").text
    assert f"IoU {page.iou[0]:.2f}" in status and "ms round trip" in status
    save_screenshot(browser)

    # Undo: the previous step's answer, from the page's cache (no request).
    requests_before = app(browser, "requests")
    browser.find_element(By.ID, "undo").click()
    wait_until(browser, lambda: shown(browser).box is None)
    assert app(browser, "requests") == requests_before
    page = shown(browser)
    assert page.points == two_points.points
    assert np.array_equal(page.mask, two_clicks.best_mask)

    # Multimask: the best of three masks, with the three scores.
    before = int(app(browser, "requests"))
    browser.find_element(By.ID, "multimask").click()
    answered(browser, before)
    page, pred = assert_page_shows_the_server_mask(browser, reference)
    assert page.multimask and len(page.iou) == 3 and page.points == two_points.points
    assert "best of" in browser.find_element(By.ID, "status").text

    browser.find_element(By.ID, "download").click()
    target = browser.downloads / "chelsea_mask.png"
    wait_until(browser, target.is_file, timeout=30, what="the download")
    assert target.read_bytes() == pred.mask_png


def test_page_cancels_stale_requests(browser, web, photo, reference):
    """Two right clicks in one event-loop task, so the first request cannot have been
    answered when the second click comes: the first is aborted, the second answered."""
    open_photo(browser, web, photo)
    before = int(app(browser, "requests"))
    at(browser, FOREGROUND).click().perform()
    answered(browser, before)
    cancelled = int(app(browser, "cancelled"))
    before = int(app(browser, "requests"))
    browser.execute_script(
        """
        const marks = document.getElementById("marks");
        const rect = marks.getBoundingClientRect();
        for (const [x, y] of arguments[0]) {
          marks.dispatchEvent(new PointerEvent("pointerdown", {
            bubbles: true, cancelable: true, pointerId: 7, pointerType: "mouse", button: 2,
            buttons: 2, clientX: rect.left + x + 0.5, clientY: rect.top + y + 0.5}));
        }
        """,
        [BACKGROUND, (40, 250)],
    )
    wait_until(browser, lambda: int(app(browser, "requests")) == before + 2)
    answered(browser, before + 1)
    assert int(app(browser, "cancelled")) == cancelled + 1
    page, _ = assert_page_shows_the_server_mask(browser, reference)
    assert [p[:2] for p in page.points[1:]] == [list(BACKGROUND), [40, 250]]


def test_page_starts_a_lost_session_again(browser, web, photo, reference, triton_server):
    """The server drops the page's session (ended here behind its back): the next click is
    answered all the same, by a new session started with the image and the clicks."""
    open_photo(browser, web, photo)
    lost = int(app(browser, "session-id"))
    assert 0 < lost < 2**53
    with Sam2Client(triton_server.http_url) as client:
        client.triton.infer_session(SESSION, {}, ("image_size",), session_id=lost, end=True)
    before = int(app(browser, "requests"))
    at(browser, FOREGROUND).click().perform()
    answered(browser, before)
    assert app(browser, "state") == "ready", browser.find_element(By.ID, "error").text
    assert app(browser, "restarts") == "1"
    assert int(app(browser, "session-id")) != lost
    assert "started again" in browser.find_element(By.ID, "status").text
    assert_page_shows_the_server_mask(browser, reference)


def test_page_shows_a_server_error_in_words(browser, web):
    """A dropped file the server cannot read: the page shows the server's own message."""
    data = b"these are notes, not an image\n"
    with pytest.raises(UserError) as refused:  # what the server runs on image_bytes
        decode_image(data, "image_bytes")
    browser.get(web.url)
    wait_until(browser, lambda: app(browser, "state") == "empty")
    browser.execute_script(
        """
        const files = new DataTransfer();
        files.items.add(new File([arguments[0]], "notes.jpg", {type: "image/jpeg"}));
        document.getElementById("drop").dispatchEvent(
          new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
        """,
        data.decode(),
    )
    wait_until(browser, lambda: app(browser, "state") == "error")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert error.text.startswith("The server answered HTTP 400: "), error.text
    assert str(refused.value) in error.text


def test_page_says_when_the_proxy_cannot_reach_triton(browser, tmp_path):
    """No Triton behind the proxy (starting, restarting): nginx's 502 page is HTML, and the
    page says in words what it means instead of showing a blank canvas."""
    proxy = WebProxy(f"127.0.0.1:{free_port()}", free_port())
    with open(tmp_path / "nginx.log", "w") as out:
        proxy.start(stdout=out, stderr=out)
        try:
            browser.get(proxy.url)
            wait_until(browser, lambda: app(browser, "state") == "empty")
            browser.execute_script("""
                const files = new DataTransfer();
                files.items.add(new File(["x"], "photo.jpg", {type: "image/jpeg"}));
                document.getElementById("drop").dispatchEvent(
                  new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
                """)
            wait_until(browser, lambda: app(browser, "state") == "error")
        finally:
            proxy.stop()
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert error.text == (
        "The server answered HTTP 502: Bad Gateway: the proxy could not reach Triton "
        "(is it starting, or restarting?)"
    )


def test_committed_screenshot_is_small_and_shown_in_readme():
    assert COMMITTED_SCREENSHOT.stat().st_size < 300_000
    assert f"]({COMMITTED_SCREENSHOT.relative_to(ROOT)})" in (ROOT / "README.md").read_text()


# --------------------------------------------------------------------------------------------
# tests: serve_local --web and the compose service
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_repository(tmp_path_factory) -> Path:
    """A repository of one python-backend model: Triton starts in a second or two."""
    from test_proxy import IDENTITY_CONFIG, IDENTITY_MODEL

    repository = tmp_path_factory.mktemp("small_repository")
    (repository / "identity" / "1").mkdir(parents=True)
    (repository / "identity" / "config.pbtxt").write_text(IDENTITY_CONFIG)
    (repository / "identity" / "1" / "model.py").write_text(IDENTITY_MODEL)
    return repository


def serve_local_args(repository: Path, web_port: int) -> list[str]:
    ports = [free_port() for _ in range(3)]
    return [
        *("--repository", str(repository), "--http-port", str(ports[0])),
        *("--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])),
        *("--web", str(web_port), "--probe-interval", "0", "--exit-timeout", "1"),
    ]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def test_serve_local_serves_the_page_and_stops_nginx_with_triton(small_repository, tmp_path):
    web_port = free_port()
    log = tmp_path / "serve_local.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "serve_local.py")]
            + serve_local_args(small_repository, web_port),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{web_port}/"
    try:
        deadline = time.monotonic() + 120
        while f"the page: {url}\n" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        page = requests.get(url, timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
        assert page.content == (WEB_DIR / "index.html").read_bytes()
        script = requests.get(url + "app.js", timeout=10)  # a module script needs a JS type
        assert "javascript" in script.headers["Content-Type"]
        assert requests.get(url + "v2/health/ready", timeout=10).status_code == 200
        # The proxy's allow-list and bounds (sam2-rest.conf), here too.
        assert requests.get(url + "v2/models/identity/ready", timeout=10).status_code == 403
        form = requests.post(
            url + "v2/models/sam2_session/infer",
            data=b"a=1",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=10,
        )
        assert form.status_code == 415, form.text

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - t0 < 20
        assert not listening(web_port), "nginx still listens after serve_local stopped"
    finally:
        if proc.poll() is None:  # a failed test: serve_local's own clean stop first
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and "Traceback" not in proc.stderr
    assert "serving in" not in proc.stdout
    return lines[0]


def test_serve_local_web_port_in_use_is_one_line(small_repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_script(
            "serve_local.py", *serve_local_args(small_repository, port), check=False, timeout=60
        )
    assert f"web port {port} on 127.0.0.1 is already in use" in one_error_line(proc)


def test_serve_local_web_port_must_not_be_triton_s(small_repository):
    args = serve_local_args(small_repository, 0)
    http_port = args[args.index("--http-port") + 1]
    args[args.index("--web") + 1] = http_port
    proc = run_script("serve_local.py", *args, check=False, timeout=60)
    assert "is one of Triton's ports" in one_error_line(proc)


def test_compose_web_service(tmp_path):
    """The `web` service: nginx pinned (the release deploy/kubernetes runs), on 127.0.0.1,
    after `triton`, with web.conf, the shared files and the page mounted read-only where the
    configuration looks for them."""
    import yaml
    from test_packaging import mounts, ports, render_compose

    compose = render_compose(tmp_path)
    web = compose["services"]["web"]
    kustomization = yaml.safe_load(
        (ROOT / "deploy" / "kubernetes" / "base" / "kustomization.yaml").read_text()
    )
    [nginx] = [i for i in kustomization["images"] if i["name"] == "nginx"]
    assert web["image"] == f"nginx:{nginx['newTag']}"
    assert "triton" in web["depends_on"]
    assert ports(web) == {("127.0.0.1", "8080", 8080)}
    moved = render_compose(tmp_path, SAM2_BIND_ADDRESS="192.0.2.10", SAM2_WEB_PORT="9090")
    assert ports(moved["services"]["web"]) == {("192.0.2.10", "9090", 8080)}

    mounted = mounts(web)
    expected = {
        "/etc/nginx/conf.d/default.conf": NGINX_DIR / "web.conf",
        "/etc/nginx/sam2": NGINX_DIR,
        "/srv/sam2/www": WEB_DIR,
    }
    for target, source in expected.items():
        assert Path(mounted[target]["source"]) == source and mounted[target]["read_only"]
    conf = (NGINX_DIR / "web.conf").read_text()
    assert "    listen 8080;\n" in conf
    # Forwarded to the triton service's HTTP port, with the shared files from sam2/.
    assert "    server triton:8000 resolve;\n" in conf
    assert 8000 in {target for _, _, target in ports(compose["services"]["triton"])}
    for name in ("sam2-bounds.conf", "sam2-limits.conf", "sam2-rest.conf"):
        assert f"include sam2/{name};" in conf
    assert "    root /srv/sam2/www;\n" in (NGINX_DIR / "sam2-rest.conf").read_text()
