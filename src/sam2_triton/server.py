"""Run the real ``tritonserver`` from the ``nvidia-pytriton`` wheel on a model repository.

The wheel ships Triton 2.51 with only the python backend. We lay out a backend directory
that holds a copy of that python backend (with the stub built for this Python) and our
Python-based ``onnxruntime`` backend (``sam2_triton/backend/onnxruntime/model.py``), then
start ``tritonserver`` against the unchanged model repository. What runs is the same
server binary, HTTP/gRPC frontends, dynamic batcher, ensemble scheduler and metrics as in
the NGC image; only the ONNX Runtime backend is ours instead of NVIDIA's C++ one.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sam2_triton import health
from sam2_triton.model_config import ONNX_PLATFORM, VIDEO, VIDEO_WEIGHTS, read_config
from sam2_triton.models import UserError

#: This project's Python-based backends, one folder each: ``onnxruntime`` (stands in for
#: NVIDIA's C++ ONNX Runtime backend) and ``sam2_session`` (the stateful session model).
BACKENDS = Path(__file__).parent / "backend"
#: Where the python backend keeps the shared-memory region of each stub process.
SHM_DIR = Path("/dev/shm")
STUB_NAME = "triton_python_backend_stub"
#: Stack of tritonserver's threads (glibc sizes them from RLIMIT_STACK), as NVIDIA runs its
#: containers (``--ulimit stack=67108864``, also in docker-compose.yml). Triton 2.51's HTTP
#: front end uses stack in proportion to a body's JSON nesting and to the size of a
#: form-urlencoded body, and segfaults when it runs out: with the usual 8 MiB, 150,000 nested
#: arrays (300 KB) do; with 64 MiB it takes about a million (SECURITY.md).
STACK_BYTES = 64 << 20


def _raise_stack_limit() -> None:
    """In the child before ``exec``: lift the soft stack limit to :data:`STACK_BYTES`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = STACK_BYTES if hard == resource.RLIM_INFINITY else min(STACK_BYTES, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def visible_gpu_count() -> int:
    """How many GPUs a CUDA process started from here would see (``CUDA_VISIBLE_DEVICES``
    applies, as it does to tritonserver's device ids); 0 without a CUDA driver. Asks the
    driver itself (``cuDeviceGetCount``), which creates no context and allocates nothing on
    any GPU."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def tritonserver_dist() -> Path:
    """The ``pytriton/tritonserver`` folder of the installed wheel, or :class:`UserError`."""
    # Locate the package without importing it: only its tritonserver folder is used, not
    # PyTriton's Python API (nor its dependencies).
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise UserError(
            "tritonserver is not installed: pip install 'sam2-triton[serve]' "
            "(it comes with the nvidia-pytriton wheel)"
        )
    dist = Path(spec.origin).parent / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise UserError(f"tritonserver binary not found in {dist}; reinstall nvidia-pytriton")
    return dist


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on ``host:port`` (or it cannot be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port nothing listens on now (for tests and benchmarks), never one this process
    was given before: the kernel may hand the same free port out twice before anything binds
    it (a server then got one port for HTTP and metrics and refused to start)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


#: The header (gRPC metadata key) that Triton's repository API asks for where
#: :attr:`EmbeddedTriton.models` turns on explicit model control.
REPOSITORY_API_HEADER = "sam2-triton-repository-key"


def check_repository(
    repository: Path, config_name: str | None, only: Sequence[str] | None = None
) -> list[str]:
    """Names of the models in ``repository``; :class:`UserError` for a missing ONNX file (of
    the models in ``only``, where given) or for a model of ``only`` that is not there."""
    if not repository.is_dir():
        raise UserError(f"model repository not found: {repository}")
    models = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        config_path = model_dir / "config.pbtxt"
        if config_name and (model_dir / "configs" / f"{config_name}.pbtxt").is_file():
            config_path = model_dir / "configs" / f"{config_name}.pbtxt"
        if not config_path.is_file():
            continue
        models.append(model_dir.name)
        if only is not None and model_dir.name not in only:
            continue  # not loaded: its files are not needed
        config = read_config(config_path)
        if config.platform == ONNX_PLATFORM or config.backend == "onnxruntime":
            needed = model_dir / "1" / (config.default_model_filename or "model.onnx")
        elif config.backend == VIDEO:
            needed = model_dir / "1" / VIDEO_WEIGHTS
        else:
            needed = None
        if needed is not None and not needed.is_file():
            raise UserError(
                f"model {model_dir.name}: {needed} is missing "
                "(export it with scripts/export_onnx.py)"
            )
    if not models:
        raise UserError(f"no models (config.pbtxt) in {repository}")
    unknown = [m for m in only or () if m not in models]
    if unknown:
        raise UserError(
            f"no model {', '.join(unknown)} in {repository} (it has {', '.join(models)})"
        )
    return models


@dataclass
class EmbeddedTriton:
    """One ``tritonserver`` process serving ``repository``.

    ``config_name`` selects ``<model>/configs/<name>.pbtxt`` (Triton's
    ``--model-config-name``), e.g. ``"cpu"`` on a machine without a GPU. ``host`` is the
    address all three endpoints bind to; 127.0.0.1 keeps them off the network.
    """

    repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    config_name: str | None = None
    host: str = "127.0.0.1"
    log_verbose: int = 0
    exit_on_error: bool = False
    #: How long Triton drains in-flight requests and open connections when stopped.
    exit_timeout_s: int = 10
    #: Refuse to start when an ONNX model's file is missing (off: let Triton report it).
    precheck: bool = True
    #: CUDA memory pool of each GPU (MiB) through which GPU tensors move between Triton and
    #: the python backend; Triton's default of 64 MiB is less than one batch of encoder
    #: outputs. None: Triton's default (right for the CPU configs).
    cuda_memory_pool_mb: int | None = None
    #: The GPUs that :attr:`cuda_memory_pool_mb` is set for: ``range(gpu_count)``. None: the
    #: GPUs visible here (:func:`visible_gpu_count`; GPU 0 where none is). Triton takes the
    #: pool's size per GPU, and a GPU not named keeps Triton's default.
    gpu_count: int | None = None
    #: Pinned host memory pool (MiB) for Triton's copies between host and GPU. None: Triton's
    #: default (256 MiB).
    pinned_memory_pool_mb: int | None = None
    #: Load only these models (Triton's explicit model control; an ensemble brings the models
    #: it calls). None: every model of the repository. Explicit control opens Triton's
    #: repository API (load, unload: a load may carry model files, so code), so it is then
    #: restricted to requests with :attr:`repository_api_headers`, a secret of this object.
    models: Sequence[str] | None = None
    repository_api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    extra_args: list[str] = field(default_factory=list)
    #: Name prefix of the python backend's shared-memory regions (``/dev/shm``): unique to
    #: this object, so that :meth:`stop` removes the regions of stubs that died (a dead stub
    #: leaves its region behind) and never another server's.
    shm_prefix: str = field(
        default_factory=lambda: f"sam2_triton_{os.getpid()}_{secrets.token_hex(4)}_"
    )
    process: subprocess.Popen | None = None
    _workdir: tempfile.TemporaryDirectory | None = None

    @property
    def repository_api_headers(self) -> dict[str, str]:
        """The header Triton's repository API (index, load, unload) asks for: none where all
        models are loaded (``--model-control-mode=none`` refuses loads and unloads anyway)."""
        if self.models is None:
            return {}
        return {REPOSITORY_API_HEADER: self.repository_api_key}

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def prepare_backends(self, root: Path) -> Path:
        """Lay out ``root/backends`` with the python backend and our Python-based ones."""
        dist = tritonserver_dist()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise UserError(f"nvidia-pytriton has no python backend stub for Python {version}")
        backends = root / "backends"
        shutil.copytree(dist / "backends" / "python", backends / "python")
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        for source in sorted(BACKENDS.glob("*/model.py")):
            (backends / source.parent.name).mkdir(parents=True)
            shutil.copy2(source, backends / source.parent.name / "model.py")
        return backends

    def command(self, backends: Path) -> list[str]:
        dist = tritonserver_dist()
        cmd = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={dist / 'caches'}",
            "--model-control-mode=" + ("none" if self.models is None else "explicit"),
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            # A model that fails to load is reported UNAVAILABLE; the others keep serving.
            f"--exit-on-error={str(self.exit_on_error).lower()}",
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.models is not None:
            cmd += [f"--load-model={name}" for name in self.models]
            restriction = f"model-repository:{REPOSITORY_API_HEADER}={self.repository_api_key}"
            cmd += [f"--http-restricted-api={restriction}"]
            cmd += [f"--grpc-restricted-protocol={restriction}"]
        if self.config_name:
            cmd.append(f"--model-config-name={self.config_name}")
        if self.cuda_memory_pool_mb is not None:
            gpus = visible_gpu_count() if self.gpu_count is None else self.gpu_count
            size = self.cuda_memory_pool_mb << 20
            cmd += [f"--cuda-memory-pool-byte-size={gpu}:{size}" for gpu in range(max(gpus, 1))]
        if self.pinned_memory_pool_mb is not None:
            cmd.append(f"--pinned-memory-pool-byte-size={self.pinned_memory_pool_mb << 20}")
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        """The stub must find this interpreter's libpython and this environment's packages."""
        env = os.environ.copy()
        libs = [str(tritonserver_dist().parent.parent / "nvidia_pytriton.libs")]
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir:
            libs.insert(0, libdir)
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        # The stub's embedded Python finds its prefix (and so the venv's site-packages)
        # from the first `python3` on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def start(self, stdout=None, stderr=None) -> "EmbeddedTriton":
        """Check ports and repository, then start ``tritonserver`` (does not wait)."""
        tritonserver_dist()
        self.repository = Path(self.repository).resolve()
        if self.precheck:
            check_repository(self.repository, self.config_name, self.models)
        for port, what in (
            (self.http_port, "HTTP"),
            (self.grpc_port, "gRPC"),
            (self.metrics_port, "metrics"),
        ):
            if port_in_use(port, self.host):
                raise UserError(f"{what} port {port} on {self.host} is already in use")
        self._workdir = tempfile.TemporaryDirectory(prefix="sam2-triton-")
        backends = self.prepare_backends(Path(self._workdir.name))
        self.process = subprocess.Popen(
            self.command(backends),
            env=self.environment(),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # Ctrl-C reaches us; we stop the server in order.
            preexec_fn=_raise_stack_limit,
        )
        return self

    def is_ready(self) -> bool:
        try:
            url = f"http://{self.http_url}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def model_states(self) -> dict[str, tuple[str, str]]:
        """``{model: (state, reason)}`` from Triton's repository index (empty if unreachable):
        :func:`sam2_triton.health.model_states` with this server's headers."""
        try:
            return health.model_states(self.http_url, 2, self.repository_api_headers)
        except health.ServerUnreachable:
            return {}

    def unavailable_models(self) -> dict[str, str]:
        """Models Triton could not load, with the first line of its reason."""
        return {
            name: reason.strip().splitlines()[0] if reason.strip() else "failed to load"
            for name, (state, reason) in self.model_states().items()
            if state == "UNAVAILABLE"
        }

    def wait_ready(self, timeout: float = 120, allow_unavailable: bool = False) -> float:
        """Wait until ``/v2/health/ready``; return the seconds it took or raise UserError.

        With ``allow_unavailable``, also return once every model has finished loading and
        some failed (see :meth:`unavailable_models`): the others are served.
        """
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.process is not None and self.process.poll() is not None:
                raise UserError(f"tritonserver exited with code {self.process.returncode}")
            if self.is_ready():
                return time.monotonic() - t0
            if allow_unavailable:
                # Settled: a load failed and nothing is loading any more. A model with no
                # state is an ensemble Triton never loaded because a step failed.
                states = [state for state, _ in self.model_states().values()]
                if "UNAVAILABLE" in states and all(
                    s in ("READY", "UNAVAILABLE", "") for s in states
                ):
                    return time.monotonic() - t0
            time.sleep(0.2)
        raise UserError(f"tritonserver not ready after {timeout:.0f} s")

    def owned_processes(self) -> dict[int, list[str]]:
        """``{pid: argv}`` of the live processes of this start: ``tritonserver`` and its
        python stubs, also stubs re-parented after ``tritonserver`` died. Found by their
        process group and this start's backend folder in their command line, so a process
        that merely reuses a pid or group id is never taken for ours."""
        if self.process is None or self._workdir is None:
            return {}
        marker = self._workdir.name
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:  # gone meanwhile, or not ours to read
                continue
            state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == self.process.pid and state != "Z" and any(marker in a for a in argv):
                found[int(entry.name)] = [a for a in argv if a]
        return found

    def stub_processes(self) -> dict[int, str]:
        """``{pid: model instance}`` of the live python stubs (e.g. ``sam2_decoder_0_0``)."""
        return {
            pid: argv[8] if len(argv) > 8 else "?"
            for pid, argv in self.owned_processes().items()
            if argv[0].endswith(STUB_NAME)
        }

    def shm_regions(self) -> list[Path]:
        """The python backend's shared-memory regions of this server that exist now."""
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait for Triton's drain, SIGKILL as a last resort; return the exit code.

        Then end what a crash leaves behind: stub processes still running (by pid, see
        :meth:`owned_processes`) and the shared-memory regions of this server.
        """
        timeout = self.exit_timeout_s + 20 if timeout is None else timeout
        proc = self.process
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet: the group is ours
                    proc.wait()
            code = proc.returncode
            self._end_leftovers()
        self.process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        return code

    def _end_leftovers(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while (left := self.owned_processes()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for region in self.shm_regions():
            region.unlink(missing_ok=True)

    def __enter__(self) -> "EmbeddedTriton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
