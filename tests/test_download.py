"""scripts/download_checkpoints.py against a real HTTP server on 127.0.0.1.

The server serves a random-init SAM2.1 tiny (the shared ``tiny_checkpoint``) and can be told
to drop the connection, stall, ignore ``Range``, answer with an error status or serve other
bytes, so that every failure path runs for real, through the CLI a user runs. The SHA-256
checks (``SHA256SUMS``, ``--sha256``) are exercised against the download CLI, the export
CLI and coreutils' ``sha256sum -c``.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import run_script

from sam2_triton.models import MODEL_SIZES

TINY = MODEL_SIZES["tiny"].checkpoint_file
SUMS = "SHA256SUMS"
SAVED = sorted([TINY, SUMS])  # what a successful download leaves in --dest


@dataclass
class ServerState:
    """What the server serves and how it misbehaves; reset before every test."""

    files: dict[str, bytes] = field(default_factory=dict)
    status: int | None = None  # answer every request with this error status
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    drop_after: int | None = None  # close the connection after this many body bytes
    stall: bool = False  # with drop_after: go silent instead of closing
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    authorization: list[str | None] = field(default_factory=list)  # Authorization headers
    release: threading.Event = field(default_factory=threading.Event)  # ends a stall
    url: str = ""  # base URL to pass as --base-url


class Handler(BaseHTTPRequestHandler):
    """Static files from ``self.server.state`` with ``Range: bytes=N-`` support."""

    def log_message(self, format, *args):
        pass  # keep pytest's output clean

    def do_GET(self) -> None:
        state: ServerState = self.server.state
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        state.requests.append((name, range_header))
        state.authorization.append(self.headers.get("Authorization"))
        if state.status is not None:
            self.send_error(state.status)
            return
        data = state.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if range_header and not state.ignore_range:
            # Only the form the downloader sends: "bytes=N-".
            start = int(range_header.removeprefix("bytes=").removesuffix("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.drop_after is not None:
            self.wfile.write(body[: state.drop_after])
            self.wfile.flush()
            if state.stall:
                state.release.wait(30)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def source(tiny_checkpoint) -> bytes:
    return tiny_checkpoint.read_bytes()


@pytest.fixture(scope="module")
def http_server():
    """One threaded server for the module; each test gives it a fresh state."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.state = ServerState()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.state.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(http_server, source) -> ServerState:
    """A fresh :class:`ServerState` serving the tiny checkpoint; ``.url`` is its base URL."""
    state = ServerState(files={TINY: source}, url=f"http://127.0.0.1:{http_server.server_port}")
    http_server.state = state
    yield state
    state.release.set()  # free a handler the test left stalled


def direct_env(**extra: str) -> dict[str, str]:
    """This environment without proxy settings: the requests must reach the test's server."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return {**env, **extra}


def download(server: ServerState, dest: Path, *args: str):
    """``download_checkpoints.py --model tiny`` from ``server`` into ``dest``."""
    return run_script(
        "download_checkpoints.py",
        *("--model", "tiny", "--dest", dest, "--base-url", server.url, *args),
        check=False,
        env=direct_env(),
        timeout=120,
    )


def error_line(proc) -> str:
    """The CLI's one stderr line for a failure; fails unless that is all stderr holds."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def files_in(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_full_download(server, source, tmp_path):
    proc = download(server, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / TINY).read_bytes() == source
    assert files_in(tmp_path) == SAVED
    assert server.requests == [(TINY, None)]
    # The digest is recorded in sha256sum's own format: coreutils checks the file with it.
    assert (tmp_path / SUMS).read_text() == f"{sha256(source)}  {TINY}\n"
    check = subprocess.run(
        ["sha256sum", "-c", SUMS], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0 and check.stdout == f"{TINY}: OK\n", check


def flip_weight_bit(path: Path) -> None:
    """Flip one bit in the middle of the checkpoint's largest tensor, in place.

    torch's zip format stores tensors uncompressed and ``torch.load`` does not check the
    zip's CRCs, so the file still loads, with every name and shape intact.
    """
    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda e: e.file_size)
    with open(path, "r+b") as f:
        f.seek(entry.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))


def test_bit_flip_after_download_is_refused_by_download_and_export(server, source, tmp_path):
    import torch

    assert download(server, tmp_path).returncode == 0
    checkpoint = tmp_path / TINY
    flip_weight_bit(checkpoint)
    # The loading checks would pass: same tensors, same shapes, one value differs.
    before = torch.load(io.BytesIO(source), map_location="cpu", weights_only=True)["model"]
    after = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    assert sum(not torch.equal(before[k], after[k]) for k in before) == 1

    line = error_line(download(server, tmp_path))
    assert f"{checkpoint} changed since it was downloaded" in line, line
    assert sha256(source) in line and "download it again" in line, line
    assert server.requests == [(TINY, None)]  # the rerun asked the server nothing

    repo = tmp_path / "repository"
    export = ("export_onnx.py", "--model", "tiny", "--checkpoint", checkpoint)
    line = error_line(run_script(*export, "--repository", repo, check=False))
    assert f"{checkpoint} changed since it was downloaded" in line, line
    # --sha256 takes the place of the record, and is checked the same way.
    proc = run_script(*export, "--repository", repo, "--sha256", sha256(source), check=False)
    line = error_line(proc)
    assert f"not the expected {sha256(source)} (--sha256)" in line, line
    assert not repo.exists()


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> bytes:
    """A tiny checkpoint of the right names and shapes with other weights (seed 1)."""
    from sam2_triton.testing import save_random_checkpoint

    path = tmp_path_factory.mktemp("other") / TINY
    return save_random_checkpoint("tiny", path, seed=1).read_bytes()


def test_other_weights_of_the_right_shapes_are_refused(server, source, other_weights, tmp_path):
    """A mirror serving other weights: caught by --sha256, and by the digest recorded at an
    earlier download (trust on first use) when the file is downloaded again."""
    server.files[TINY] = other_weights
    line = error_line(download(server, tmp_path, "--sha256", sha256(source).upper()))
    assert f"SHA-256 {sha256(other_weights)}, not the expected {sha256(source)}" in line, line
    assert files_in(tmp_path) == []

    server.files[TINY] = source
    proc = download(server, tmp_path, "--sha256", sha256(source).upper())
    assert proc.returncode == 0, proc.stderr
    assert f"SHA-256 {sha256(source)}" in proc.stdout
    (tmp_path / TINY).unlink()  # the user deletes it; SHA256SUMS keeps the record

    server.files[TINY] = other_weights
    line = error_line(download(server, tmp_path))
    assert "an earlier download of it recorded" in line and sha256(source) in line, line
    assert files_in(tmp_path) == [SUMS]


def test_sha256_option_mistakes(server, source, tmp_path):
    (tmp_path / TINY).write_bytes(source)
    line = error_line(download(server, tmp_path, "--sha256", "0" * 64))
    assert f"has SHA-256 {sha256(source)}, not the expected {'0' * 64}" in line, line
    assert "delete it to download it again" in line
    line = error_line(download(server, tmp_path, "--sha256", "abc"))
    assert "not a SHA-256 digest (64 hex digits): 'abc'" in line, line
    proc = run_script(
        *("download_checkpoints.py", "--all", "--sha256", sha256(source), "--dest", tmp_path),
        check=False,
    )
    assert "give it with one --model" in error_line(proc)
    assert server.requests == []
    assert files_in(tmp_path) == [TINY]


def test_interrupted_download_resumes(server, source, tmp_path):
    cut = 3 * 2**20 + 12345
    server.drop_after = cut
    line = error_line(download(server, tmp_path))
    assert f"{server.url}/{TINY}" in line and "interrupted" in line, line
    assert not (tmp_path / TINY).exists()
    assert files_in(tmp_path) == [f"{TINY}.partial"]
    # urllib3 drops the last, incomplete chunk it was reading when the connection closed.
    kept = (tmp_path / f"{TINY}.partial").stat().st_size
    assert cut - 2**20 < kept <= cut

    server.drop_after = None
    proc = download(server, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert server.requests[-1] == (TINY, f"bytes={kept}-")
    assert "resuming" in proc.stdout
    assert (tmp_path / TINY).read_bytes() == source
    assert files_in(tmp_path) == SAVED


def test_server_ignoring_range_restarts_from_zero(server, source, tmp_path):
    # Garbage in the partial file: only a restart from zero gives the right bytes.
    (tmp_path / f"{TINY}.partial").write_bytes(os.urandom(100_000))
    server.ignore_range = True
    proc = download(server, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert server.requests == [(TINY, "bytes=100000-")]
    assert "starting again from zero" in proc.stdout
    assert (tmp_path / TINY).read_bytes() == source
    assert files_in(tmp_path) == SAVED


@pytest.mark.parametrize("extra", [0, 10], ids=["complete", "too-long"])
def test_partial_past_the_end_416(server, source, tmp_path, extra):
    """416 to our Range: a complete partial is used as is, a longer one is replaced."""
    (tmp_path / f"{TINY}.partial").write_bytes(source + b"x" * extra)
    proc = download(server, tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = [(TINY, f"bytes={len(source) + extra}-")] + [(TINY, None)] * (extra > 0)
    assert server.requests == expected
    assert (tmp_path / TINY).read_bytes() == source
    assert files_in(tmp_path) == SAVED


@pytest.mark.parametrize("status", [404, 500])
def test_http_error(server, tmp_path, status):
    server.status = status
    line = error_line(download(server, tmp_path))
    assert f"{server.url}/{TINY}" in line and f"HTTP {status}" in line, line
    assert files_in(tmp_path) == []


def test_connection_refused(tmp_path):
    # Bound but not listening: connections to it are refused, and no one else can take it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        proc = run_script(
            *("download_checkpoints.py", "--model", "tiny", "--dest", tmp_path, "--base-url", url),
            check=False,
            env=direct_env(),
        )
    line = error_line(proc)
    assert f"{url}/{TINY}" in line and "refused" in line, line
    assert files_in(tmp_path) == []


def test_unresolvable_host(tmp_path):
    url = "http://sam2-checkpoints.invalid"  # RFC 6761: .invalid never resolves
    proc = run_script(
        *("download_checkpoints.py", "--model", "tiny", "--dest", tmp_path, "--base-url", url),
        check=False,
        env=direct_env(),
    )
    line = error_line(proc)
    assert f"{url}/{TINY}" in line and "cannot resolve host" in line, line
    assert files_in(tmp_path) == []


def test_stalled_transfer_times_out_and_keeps_partial(server, tmp_path):
    server.drop_after, server.stall = 2**20, True
    line = error_line(download(server, tmp_path, "--timeout", "1"))
    assert "interrupted" in line and "no data" in line, line
    assert files_in(tmp_path) == [f"{TINY}.partial"]


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Please log in to use this network</body></html>",  # a captive portal
        random.Random(0).randbytes(2**20),
    ],
    ids=["html", "random"],
)
def test_corrupt_download_is_rejected_and_deleted(server, tmp_path, body):
    server.files[TINY] = body
    line = error_line(download(server, tmp_path))
    assert f"{server.url}/{TINY}" in line and "is not a PyTorch checkpoint" in line, line
    assert files_in(tmp_path) == []


def test_wrong_shapes_are_rejected_and_deleted(server, tiny_checkpoint, tmp_path):
    import torch

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(3, 3)
    wrong = tmp_path / "wrong.pt"
    torch.save(state, wrong)
    server.files[TINY] = wrong.read_bytes()
    dest = tmp_path / "dest"
    line = error_line(download(server, dest))
    assert "not a SAM2.1 tiny checkpoint" in line and key in line, line
    assert files_in(dest) == []


def test_verified_file_is_not_downloaded_again(server, source, tiny_checkpoint, tmp_path):
    shutil.copy(tiny_checkpoint, tmp_path / TINY)  # placed by hand: nothing recorded yet
    proc = download(server, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "already exists and verifies, skipping download" in proc.stdout
    assert (tmp_path / SUMS).read_text() == f"{sha256(source)}  {TINY}\n"
    # Recorded now: the next run compares digests instead of loading the file again.
    proc = download(server, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"already exists and matches {SUMS}, skipping download" in proc.stdout
    assert server.requests == []


def test_existing_corrupt_file_is_refused(server, tmp_path):
    (tmp_path / TINY).write_bytes(b"not a checkpoint")
    line = error_line(download(server, tmp_path))
    assert "is not a PyTorch checkpoint" in line and "delete it" in line, line
    assert server.requests == []
    assert (tmp_path / TINY).read_bytes() == b"not a checkpoint"


def test_all_from_env_base_url_without_verify(server, tmp_path):
    fakes = {
        size.checkpoint_file: os.urandom(1000 + i) for i, size in enumerate(MODEL_SIZES.values())
    }
    server.files = fakes
    env = direct_env(SAM2_CHECKPOINT_BASE_URL=server.url)
    proc = run_script(
        "download_checkpoints.py",
        "--all",
        "--dest",
        tmp_path,
        "--no-verify",
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert {name: (tmp_path / name).read_bytes() for name in files_in(tmp_path)} == {
        **fakes,
        SUMS: "".join(f"{sha256(fakes[n])}  {n}\n" for n in sorted(fakes)).encode(),
    }


def test_unknown_model(tmp_path):
    proc = run_script("download_checkpoints.py", "--model", "huge", "--dest", tmp_path, check=False)
    line = error_line(proc)
    assert "huge" in line and "tiny" in line, line
    assert files_in(tmp_path) == []


def test_credentials_in_mirror_url_never_printed(server, source, tmp_path):
    """A mirror's user:password goes out as Basic auth and never into a message."""
    url = server.url.replace("http://", "http://mirror-user:s3cr3t-token@")
    args = ("--model", "tiny", "--dest", tmp_path, "--base-url", url)
    ok = run_script("download_checkpoints.py", *args, check=False, env=direct_env())
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / TINY).read_bytes() == source
    assert server.authorization[-1] and server.authorization[-1].startswith("Basic ")

    server.status = 403
    failed = run_script(
        "download_checkpoints.py",
        *args[:3],
        tmp_path / "other",
        *args[4:],
        check=False,
        env=direct_env(),
    )
    line = error_line(failed)
    assert "403" in line
    for proc in (ok, failed):
        assert "s3cr3t-token" not in proc.stdout + proc.stderr
