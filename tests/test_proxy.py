"""The nginx proxy of deploy/nginx, run for real (Debian's nginx) in front of the embedded Triton.

* Why it bounds requests: deeply nested JSON, or a small gzip body that inflates to it, kills
  the embedded Triton 2.51 (a server of its own, started and crashed here), while a JSON
  part at the proxy's limit does not.
* sam2.conf (SECURITY.md's example, TLS and basic auth) forwards health, metadata and
  inference over HTTP and gRPC, and refuses with the documented statuses what could reach
  Triton's JSON parser unbounded, form-urlencoded bodies (which Triton parses on its stack),
  the body over 48 MiB and every endpoint not allow-listed.
* sam2-kubernetes.conf (the Kubernetes proxy) in front of two Tritons: every request of a
  session reaches one replica, sessions spread over both, and when a replica goes away its
  sessions move to the other.

Debian 12 ships nginx 1.22, older than the Kubernetes proxy needs (run-time DNS resolution of
upstream servers, `http2 on`: 1.27.3 and 1.25.1). The test replaces exactly those lines with
their 1.22 form (a fixed list of loopback servers, `listen ... http2`) and runs the rest as
shipped, its main file (nginx-kubernetes.conf) included, with /tmp moved into the test's
folder. `bash scripts/ci_system_deps.sh` installs nginx and openssl.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import ROOT, serving
from test_sessions import assert_same
from tritonclient.utils import InferenceServerException

from sam2_triton.client import Sam2Client, Sam2Session
from sam2_triton.model_config import SESSION, SESSION_HEADER
from sam2_triton.server import EmbeddedTriton, free_port

NGINX_DIR = ROOT / "deploy" / "nginx"
SECURITY = ROOT / "SECURITY.md"
#: sam2-bounds.conf's bound on the JSON part of a request.
JSON_LIMIT = 16384
USER, PASSWORD = "sam2-test", "not-a-secret"
AUTH = (USER, PASSWORD)
PROXY_ERRORS = {
    400: "Inference-Header-Content-Length must be a byte count",
    411: "a request body needs a Content-Length",
    413: "the JSON part of the request is over 16384 bytes",
    415: "compressed request bodies are refused",
}


# --------------------------------------------------------------------------------------------
# running nginx
# --------------------------------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        pytest.fail("nginx is not installed: bash scripts/ci_system_deps.sh")
    return found


def swap(text: str, pattern: str, replacement: str) -> str:
    """``text`` with the one line matching ``pattern`` replaced (fails unless exactly one)."""
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == 1, f"expected one line matching {pattern!r}, found {count}"
    return new


def worker_user() -> str:
    """Workers of a root master run as `nobody` unless told otherwise, and could not read the
    test's private temporary folder."""
    return "user root;\n" if os.geteuid() == 0 else ""


def main_conf(workdir: Path, includes: list[str]) -> str:
    """A main nginx.conf that keeps everything in ``workdir`` and includes ``includes``."""
    include_lines = "\n".join(f"    include {name};" for name in includes)
    return f"""{worker_user()}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
{include_lines}
}}
"""


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nginx does not listen on {port}:\n{log.read_text()}")


@contextlib.contextmanager
def running_nginx(workdir: Path, ports: list[int]) -> Iterator[Path]:
    """Check and start nginx on ``workdir/nginx.conf``; stop it on leaving."""
    conf = workdir / "nginx.conf"
    cmd = [nginx_binary(), "-e", "stderr", "-p", str(workdir), "-c", str(conf)]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}"
    log = workdir / "nginx.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([*cmd, "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT)
    try:
        for port in ports:
            wait_for_port(port, proc, log)
        yield workdir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def install_shared_files(workdir: Path) -> None:
    """deploy/nginx/sam2-*.conf into ``workdir/sam2`` (where `include sam2/...` looks)."""
    (workdir / "sam2").mkdir()
    for path in NGINX_DIR.glob("sam2-*.conf"):
        shutil.copy2(path, workdir / "sam2" / path.name)
    # sam2-rest.conf's static location includes the mime types beside the main config.
    shutil.copy2("/etc/nginx/mime.types", workdir / "mime.types")


def point_static_root(workdir: Path) -> Path:
    """Point sam2-rest.conf's static folder at ``workdir/www`` and put a page in it."""
    rest = workdir / "sam2" / "sam2-rest.conf"
    www = workdir / "www"
    www.mkdir()
    (www / "index.html").write_text("<!doctype html><title>sam2</title>\n")
    rest.write_text(swap(rest.read_text(), r"^    root /srv/sam2/www;$", f"    root {www};"))
    return www


# --------------------------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------------------------


def decoder_inputs(seed: int = 0, module=httpclient) -> list:
    """A binary ``sam2_decoder`` request: seeded features and one click, as ``module``
    (``tritonclient.http`` or ``tritonclient.grpc``) puts it on the wire."""
    rng = np.random.default_rng(seed)
    feed = {
        "image_embeddings": rng.standard_normal((1, 256, 64, 64), np.float32),
        "high_res_feats_0": rng.standard_normal((1, 32, 256, 256), np.float32),
        "high_res_feats_1": rng.standard_normal((1, 64, 128, 128), np.float32),
        "point_coords": np.array([[[500.0, 375.0]]], np.float32),
        "point_labels": np.ones((1, 1), np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros((1, 1), np.float32),
    }
    inputs = []
    for name, value in feed.items():
        item = module.InferInput(name, list(value.shape), "FP32")
        item.set_data_from_numpy(value)
        inputs.append(item)
    return inputs


def decoder_body(seed: int = 0) -> tuple[bytes, int]:
    outputs = [httpclient.InferRequestedOutput("masks", binary_data=True)]
    return httpclient.InferenceServerClient.generate_request_body(decoder_inputs(seed), outputs)


def masks_of(response: requests.Response) -> np.ndarray:
    length = response.headers.get("Inference-Header-Content-Length")
    result = httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=int(length) if length else None
    )
    return result.as_numpy("masks")


def success_count(server: EmbeddedTriton, model: str) -> int:
    url = f"http://{server.http_url}/v2/models/{model}/stats"
    stats = requests.get(url, timeout=10).json()["model_stats"]
    return sum(s["inference_stats"]["success"]["count"] for s in stats)


def settled_counts(servers: list[EmbeddedTriton], model: str, total: int) -> list[int]:
    """Per-server success counts once they add up to ``total`` (Triton counts a request
    when it releases it, just after the response)."""
    deadline = time.monotonic() + 10
    while True:
        counts = [success_count(s, model) for s in servers]
        if sum(counts) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def assert_still_ready(server: EmbeddedTriton) -> None:
    assert server.process is not None and server.process.poll() is None, "tritonserver died"
    assert server.is_ready()


# --------------------------------------------------------------------------------------------
# Why: what the bounds keep away from Triton
# --------------------------------------------------------------------------------------------


IDENTITY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())]
            )
            for r in requests
        ]
"""
IDENTITY_CONFIG = """
name: "identity"
backend: "python"
max_batch_size: 0
input [{ name: "x", data_type: TYPE_FP32, dims: [-1] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [-1] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""


def post_raw(port: int, path: str, body: bytes, headers: dict | None = None):
    """``(status, body)``, or ``(None, reason)`` when the connection dies without an answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except (http.client.HTTPException, OSError) as e:
        return None, repr(e)
    finally:
        conn.close()


def test_nested_json_kills_triton_unless_bounded(tmp_path):
    """A JSON part at the proxy's limit (16384 levels) is answered and the server lives; 1 KB
    of gzip that inflates to a million levels kills it. A server of its own, with a
    python-backend model (Triton inflates request bodies for inference only)."""
    model = tmp_path / "repository" / "identity"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(IDENTITY_CONFIG)
    (model / "1" / "model.py").write_text(IDENTITY_MODEL)
    server = EmbeddedTriton(
        repository=tmp_path / "repository",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        exit_timeout_s=1,
    )
    with serving(server, tmp_path / "tritonserver.log"):
        infer = "/v2/models/identity/infer"
        status, answer = post_raw(server.http_port, infer, b"[" * JSON_LIMIT)
        assert status is not None and 400 <= status < 600, answer
        assert_still_ready(server)

        bomb = gzip.compress(b"[" * 1_000_000)
        assert len(bomb) < 2000
        status, answer = post_raw(server.http_port, infer, bomb, {"Content-Encoding": "gzip"})
        assert status is None, f"answered {status}: {answer!r}"
        server.process.wait(timeout=30)
        assert server.process.returncode != 0, "tritonserver survived the inflated JSON"


# --------------------------------------------------------------------------------------------
# sam2.conf: one host, TLS and basic auth (SECURITY.md)
# --------------------------------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path]:
    directory.mkdir()
    cert, key = directory / "sam2.crt", directory / "sam2.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def standalone_proxy(triton_server, tmp_path_factory):
    """deploy/nginx/sam2.conf in front of the shared server. Changed from the shipped file:
    Triton's ports, the listen address, the certificate and password file paths, the static
    folder. Attributes: ``url``, ``port``, ``cert``, ``www``."""
    workdir = tmp_path_factory.mktemp("nginx-standalone")
    install_shared_files(workdir)
    www = point_static_root(workdir)
    cert, key = make_certificate(workdir / "tls")
    (workdir / "sam2.htpasswd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    port = free_port()
    conf = (NGINX_DIR / "sam2.conf").read_text()
    conf = swap(conf, r"server 127\.0\.0\.1:8000;", f"server {triton_server.http_url};")
    conf = swap(conf, r"server 127\.0\.0\.1:8001;", f"server {triton_server.grpc_url};")
    conf = swap(conf, r"^    listen 443 ssl http2;$", f"    listen 127.0.0.1:{port} ssl http2;")
    conf = swap(conf, r"/etc/nginx/tls/sam2\.crt;", f"{cert};")
    conf = swap(conf, r"/etc/nginx/tls/sam2\.key;", f"{key};")
    conf = swap(conf, r"/etc/nginx/sam2\.htpasswd;", f"{workdir / 'sam2.htpasswd'};")
    (workdir / "conf.d").mkdir()
    (workdir / "conf.d" / "sam2.conf").write_text(conf)
    (workdir / "nginx.conf").write_text(main_conf(workdir, ["conf.d/sam2.conf"]))
    with running_nginx(workdir, [port]):
        proxy = type("Proxy", (), {})()
        proxy.url, proxy.port, proxy.cert, proxy.www = f"https://127.0.0.1:{port}", port, cert, www
        yield proxy


def test_standalone_proxy_serves_health_models_and_inference(standalone_proxy, triton_server):
    url, cert = standalone_proxy.url, str(standalone_proxy.cert)
    assert requests.get(f"{url}/v2/health/ready", verify=cert, timeout=10).status_code == 200
    ready = f"{url}/v2/models/sam2_decoder/ready"
    assert requests.get(ready, verify=cert, timeout=10).status_code == 401
    assert requests.get(ready, verify=cert, auth=AUTH, timeout=10).status_code == 200
    config = requests.get(f"{url}/v2/models/sam2_decoder/config", verify=cert, auth=AUTH)
    assert config.json()["name"] == "sam2_decoder"

    body, json_size = decoder_body()
    headers = {"Inference-Header-Content-Length": str(json_size)}
    infer = "/v2/models/sam2_decoder/infer"
    proxied = requests.post(
        url + infer, data=body, headers=headers, verify=cert, auth=AUTH, timeout=120
    )
    assert proxied.status_code == 200, proxied.text[:300]
    direct = requests.post(
        f"http://{triton_server.http_url}{infer}", data=body, headers=headers, timeout=120
    )
    np.testing.assert_array_equal(masks_of(proxied), masks_of(direct))

    page = requests.get(f"{url}/index.html", verify=cert, auth=AUTH, timeout=10)
    assert page.status_code == 200
    assert page.text == (standalone_proxy.www / "index.html").read_text()
    assert "text/html" in page.headers["Content-Type"]


def bounded_cases() -> list[tuple[str, dict, object, int]]:
    """(case, headers, body, status the proxy answers). Bodies go to the decoder's infer."""
    deep = b"[" * 300_000
    binary_header = {"Inference-Header-Content-Length": str(len(deep))}
    return [
        ("nested JSON body", {}, deep, 413),
        ("JSON-only body one byte over", {}, b" " * (JSON_LIMIT + 1), 413),
        ("binary request with a nested JSON header", binary_header, deep + b"\0" * 16, 413),
        (
            "header length smuggled after a bar",
            {"Inference-Header-Content-Length": "300000|1"},
            deep,
            400,
        ),
        ("header length not a number", {"Inference-Header-Content-Length": "abc"}, b"{}", 400),
        ("gzip body", {"Content-Encoding": "gzip"}, gzip.compress(deep), 415),
        ("deflate body", {"Content-Encoding": "deflate"}, b"x\x9c" + b"\0" * 16, 415),
        ("chunked body", {}, iter([deep[:1000], deep[1000:2000]]), 411),
    ]


@pytest.mark.parametrize(
    "case,headers,body,status", bounded_cases(), ids=[c[0] for c in bounded_cases()]
)
def test_standalone_proxy_refuses_unbounded_json(
    standalone_proxy, triton_server, case, headers, body, status
):
    response = requests.post(
        f"{standalone_proxy.url}/v2/models/sam2_decoder/infer",
        data=body,
        headers=headers,
        verify=str(standalone_proxy.cert),
        auth=AUTH,
        timeout=60,
    )
    assert response.status_code == status, response.text[:300]
    assert json.loads(response.text)["error"].startswith(PROXY_ERRORS[status])
    assert_still_ready(triton_server)


#: The proxy's answer to a form-urlencoded body (sam2-rest.conf).
FORM_ERROR = "form-urlencoded request bodies are refused"


@pytest.mark.parametrize(
    "method,path,content_type",
    [
        ("POST", "/v2/models/sam2_decoder/infer", "application/x-www-form-urlencoded"),
        ("POST", f"/v2/models/{SESSION}/infer", "Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
        ("GET", "/v2/health/ready", "application/x-www-form-urlencoded"),
    ],
)
def test_standalone_proxy_refuses_form_bodies(
    standalone_proxy, triton_server, method, path, content_type
):
    """Triton 2.51 parses a form-urlencoded body on its thread's stack, on any path (a GET of
    /v2/health/ready included), and one larger than the stack kills it (SECURITY.md): the
    proxy refuses the type whatever the body's size."""
    response = requests.request(
        method,
        standalone_proxy.url + path,
        data=b"a=" + b"b" * 4096,
        headers={"Content-Type": content_type},
        verify=str(standalone_proxy.cert),
        auth=AUTH,
        timeout=60,
    )
    assert response.status_code == 415, response.text[:300]
    assert json.loads(response.text)["error"].startswith(FORM_ERROR)
    assert_still_ready(triton_server)


def test_standalone_proxy_refuses_curl_data_binary_without_a_type(
    standalone_proxy, triton_server, tmp_path
):
    """`curl --data-binary` sends application/x-www-form-urlencoded unless told otherwise (how
    a reviewer's binary request crashed Triton): refused; the same request with its type set
    is answered."""
    body, json_size = decoder_body()
    request = tmp_path / "request.bin"
    request.write_bytes(body)
    answer = tmp_path / "answer"

    def curl(*headers: str) -> str:
        proc = subprocess.run(
            ["curl", "-sS", "-o", str(answer), "-w", "%{http_code}", "-X", "POST"]
            + ["--cacert", str(standalone_proxy.cert), "-u", f"{USER}:{PASSWORD}"]
            + ["-H", f"Inference-Header-Content-Length: {json_size}", *headers]
            + ["--data-binary", f"@{request}"]
            + [f"{standalone_proxy.url}/v2/models/sam2_decoder/infer"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert curl() == "415"
    assert json.loads(answer.read_bytes())["error"].startswith(FORM_ERROR)
    assert curl("-H", "Content-Type: application/octet-stream") == "200"
    assert_still_ready(triton_server)


def test_standalone_proxy_forwards_json_up_to_the_limit(standalone_proxy, triton_server):
    """A JSON-only body of exactly 16384 bytes reaches Triton, which answers it itself."""
    body = json.dumps({"inputs": []}).encode().ljust(JSON_LIMIT)
    response = requests.post(
        f"{standalone_proxy.url}/v2/models/sam2_decoder/infer",
        data=body,
        verify=str(standalone_proxy.cert),
        auth=AUTH,
        timeout=60,
    )
    assert response.status_code == 400, response.text[:300]
    assert not any(text in response.text for text in PROXY_ERRORS.values()), response.text
    assert_still_ready(triton_server)


def test_standalone_proxy_refuses_bodies_over_48_mib(standalone_proxy):
    """nginx answers from the Content-Length alone, before a byte of the body is sent."""
    context = ssl.create_default_context(cafile=str(standalone_proxy.cert))
    conn = http.client.HTTPSConnection("127.0.0.1", standalone_proxy.port, context=context)
    try:
        conn.putrequest("POST", "/v2/models/sam2_decoder/infer")
        conn.putheader("Content-Length", str(52 << 20))
        conn.putheader("Inference-Header-Content-Length", "100")
        conn.putheader(
            "Authorization",
            "Basic " + base64.b64encode(b"%s:%s" % (USER.encode(), PASSWORD.encode())).decode(),
        )
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert "over 48 MiB" in json.loads(response.read())["error"]
    finally:
        conn.close()


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("POST", "/v2/repository/index", 403),
        ("POST", "/v2/repository/models/sam2_decoder/unload", 403),
        ("GET", "/v2/systemsharedmemory/status", 403),
        ("GET", "/v2/models/sam2_decoder/stats", 403),
        ("POST", "/v2/models/sam2_decoder/generate", 403),
        ("GET", "/v2/models/other_model/ready", 403),
        ("PUT", "/v2/models/sam2_decoder/infer", 403),
        ("POST", "/v2/health/ready", 403),
        ("POST", "/index.html", 403),
        ("GET", "/missing.html", 404),
    ],
)
def test_standalone_proxy_refuses_what_is_not_allow_listed(standalone_proxy, method, path, status):
    response = requests.request(
        method,
        standalone_proxy.url + path,
        data=b"{}" if method != "GET" else None,
        verify=str(standalone_proxy.cert),
        auth=AUTH,
        timeout=10,
    )
    assert response.status_code == status, response.text[:300]


def test_standalone_proxy_serves_grpc(standalone_proxy):
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    client = grpcclient.InferenceServerClient(
        f"127.0.0.1:{standalone_proxy.port}",
        ssl=True,
        root_certificates=str(standalone_proxy.cert),
    )
    auth = {"authorization": f"Basic {token}"}
    try:
        assert client.is_server_ready(headers=auth)
        assert client.is_model_ready("sam2_decoder", headers=auth)
        config = client.get_model_config("sam2_decoder", headers=auth, as_json=True)
        assert config["config"]["name"] == "sam2_decoder"
        with pytest.raises(InferenceServerException):
            client.is_model_ready("sam2_decoder")  # no credentials
        with pytest.raises(InferenceServerException):
            client.get_inference_statistics(headers=auth)  # not allow-listed
        with pytest.raises(InferenceServerException):
            client.get_system_shared_memory_status(headers=auth)
    finally:
        client.close()


def test_standalone_proxy_limits_the_request_rate(standalone_proxy):
    """20 requests/s per address beyond a burst of 40, counted before authentication: of 200
    requests sent one after another (nginx answers each at once with 401), most get 429. The
    last of the sam2.conf tests, which share the proxy and so its rate-limit state."""
    with requests.Session() as session:
        statuses = [
            session.get(
                f"{standalone_proxy.url}/v2/models/sam2_decoder/ready",
                verify=str(standalone_proxy.cert),
                timeout=10,
            ).status_code
            for _ in range(200)
        ]
    assert set(statuses) == {401, 429}, statuses
    assert statuses.count(429) >= 50, statuses


def test_security_md_shows_the_shipped_files():
    """Every nginx block in SECURITY.md is one of deploy/nginx's files, exactly, and together
    they are all that sam2.conf needs."""
    blocks = re.findall(r"```nginx\n(.*?)```", SECURITY.read_text(), re.DOTALL)
    shown = {}
    for text in blocks:
        name = re.match(r"# deploy/nginx/(\S+):", text).group(1)
        assert text == (NGINX_DIR / name).read_text(), f"SECURITY.md's {name} differs from the file"
        shown[name] = text
    included = re.findall(r"include sam2/(\S+);", (NGINX_DIR / "sam2.conf").read_text())
    assert set(shown) == {"sam2.conf", *included}


# --------------------------------------------------------------------------------------------
# sam2-kubernetes.conf: session affinity over two replicas
# --------------------------------------------------------------------------------------------


#: A session of the routing test: the image with a click, then a second click.
REQUESTS_PER_SESSION = 2
ROUTING_PROMPTS = ("one_point", "points_with_negative")


@pytest.fixture(scope="module")
def routing_photo(photos, predictor):
    """The photo the routing test's sessions segment, as PNG bytes, and Meta's predictor's
    answers for :data:`ROUTING_PROMPTS` on it (what every session must get back)."""
    import io

    from PIL import Image
    from test_client_pipeline import PROMPT_CASES, predictor_states

    image = photos["chelsea"]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    prompts = [PROMPT_CASES[name].pixels(image.shape[:2]) for name in ROUTING_PROMPTS]
    states = predictor_states(predictor)
    refs = [states.predict("chelsea", image, False, None, **kw) for kw in prompts]
    return buffer.getvalue(), list(zip(prompts, refs))


def run_session(client: Sam2Client, key: int, photo) -> Sam2Session:
    """One session ``key`` through the proxy: the image with a click, then a second click,
    each request carrying the key in the affinity header (HTTP) or metadata (gRPC); answers
    equal to Meta's predictor's. Returns the session, still open on its replica."""
    data, expected = photo
    session = Sam2Session(client.triton, data, session_id=key)
    for kw, ref in expected:
        pred = session.predict(**kw, outputs=("masks", "iou_predictions", "low_res_masks"))
        assert_same(pred.masks, pred.iou_predictions, pred.low_res_logits, ref)
    return session


@pytest.fixture
def second_triton(tiny_repository, tmp_path_factory):
    """A second replica beside the shared server, on the same repository."""
    server = EmbeddedTriton(
        repository=tiny_repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        config_name="cpu",
        exit_timeout_s=2,
    )
    with serving(server, tmp_path_factory.mktemp("triton2") / "tritonserver.log"):
        yield server


def kubernetes_proxy_conf(replicas: list[EmbeddedTriton], http_port: int, grpc_port: int) -> str:
    """sam2-kubernetes.conf with the lines nginx 1.22 lacks in their 1.22 form: the replicas
    as a fixed list of loopback servers instead of DNS SRV resolution, `listen ... http2`."""
    conf = (NGINX_DIR / "sam2-kubernetes.conf").read_text()
    conf = swap(conf, r"^resolver .*;$", "")
    for service, address in (("http", "http_url"), ("grpc", "grpc_url")):
        servers = " ".join(f"server {getattr(r, address)};" for r in replicas)
        pattern = rf"^    server \S+\.svc\.cluster\.local service={service} resolve;$"
        conf = swap(conf, pattern, f"    {servers}")
    conf = swap(conf, r"^    listen 8000;$", f"    listen 127.0.0.1:{http_port};")
    conf = swap(
        conf, r"^    listen 8001;\n    http2 on;$", f"    listen 127.0.0.1:{grpc_port} http2;"
    )
    return conf


def test_kubernetes_proxy_keeps_each_session_on_one_replica(
    triton_server, second_triton, tmp_path_factory, routing_photo
):
    replicas = [triton_server, second_triton]
    # The proxy hashes on the very header the clients send.
    variable = "$http_" + SESSION_HEADER.lower().replace("-", "_")
    assert f"hash {variable} consistent;" in (NGINX_DIR / "sam2-kubernetes.conf").read_text()
    workdir = tmp_path_factory.mktemp("nginx-kubernetes")
    install_shared_files(workdir)
    http_port, grpc_port = free_port(), free_port()
    (workdir / "sam2" / "sam2-kubernetes.conf").write_text(
        kubernetes_proxy_conf(replicas, http_port, grpc_port)
    )
    # The proxy's own main file, writing into the test's folder instead of /tmp.
    main = (NGINX_DIR / "nginx-kubernetes.conf").read_text().replace("/tmp/", f"{workdir}/")
    (workdir / "nginx.conf").write_text(worker_user() + main)
    with running_nginx(workdir, [http_port, grpc_port]), contextlib.ExitStack() as stack:
        proxy = {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
        clients = {p: stack.enter_context(Sam2Client(proxy[p], p)) for p in proxy}
        # The same bounds as sam2.conf's, here too.
        refused = requests.post(
            f"http://{proxy['http']}/v2/models/{SESSION}/infer", data=b"[" * 300_000
        )
        assert refused.status_code == 413

        total = sum(success_count(r, SESSION) for r in replicas)
        counts = settled_counts(replicas, SESSION, total)
        sessions: dict[int, Sam2Session] = {}

        def replica_of_session(protocol: str, key: int) -> int:
            """Run a session; the one replica whose statistics counted all its requests."""
            nonlocal total, counts
            sessions[key] = run_session(clients[protocol], key, routing_photo)
            total += REQUESTS_PER_SESSION
            before, counts = counts, settled_counts(replicas, SESSION, total)
            grew = [after - earlier for earlier, after in zip(before, counts)]
            assert sorted(grew) == [0, REQUESTS_PER_SESSION], f"session {key} split: {grew}"
            return grew.index(REQUESTS_PER_SESSION)

        # Sessions until both replicas hold some (each gets about half of the sessions: 20
        # sessions all on one replica would happen about once in a million runs).
        placement: dict[int, int] = {}
        rng = np.random.default_rng()
        while len(set(placement.values())) < 2 and len(placement) < 20:
            key = int(rng.integers(1, 2**53))
            placement[key] = replica_of_session("http", key)
        assert set(placement.values()) == {0, 1}, f"all sessions on one replica: {placement}"
        # The proxy's access log says the same (nginx-kubernetes.conf's log format).
        log = (workdir / "nginx.out").read_text()
        for key, replica in placement.items():
            assert f"session={key} upstream={replicas[replica].http_url}" in log, key
        # gRPC sessions stick too (their metadata is an HTTP/2 header to nginx).
        for key in (7, 8):
            replica_of_session("grpc", key)

        # A replica goes away with its sessions: their next prompt reaches the other replica,
        # which has no image for them (400); the client starts each again there with the
        # image, in a new sequence, and the answer is the same.
        second_triton.stop()
        moved = [key for key, replica in placement.items() if replica == 1]
        before_first = success_count(triton_server, SESSION)
        kw, ref = routing_photo[1][0]
        for key in moved:
            pred = sessions[key].predict(**kw)
            assert pred.restarted and sessions[key].session_id != key
            assert_same(pred.masks, pred.iou_predictions, None, ref)
        served = settled_counts([triton_server], SESSION, before_first + len(moved))
        assert served[0] - before_first == len(moved)
