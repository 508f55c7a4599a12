"""Packaging and deployment files: pixi.toml, docker-compose.yml, committed Triton configs.

* pixi.toml: every task is a thin call of a script in this repository (or of a tool CI also
  runs), passes only flags that script accepts, depends on tasks that exist, and its
  dependencies agree with pyproject.toml.
* docker-compose.yml: rendered by a real Compose implementation (``docker-compose config``;
  no Docker engine needed; ``bash scripts/ci_system_deps.sh`` installs it) and checked for
  the safe defaults SECURITY.md promises.
* model_repository/: the committed config.pbtxt files are what sam2_triton.model_config
  generates, and no model artefacts are tracked in git.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from sam2_triton import model_config
from sam2_triton.models import MODEL_SIZES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PIXI = ROOT / "pixi.toml"
COMPOSE = ROOT / "docker-compose.yml"
CI_RUN = ROOT / ".ci" / "run"
THIS = Path(__file__).resolve()

#: Programs a task may start other than ``python <script in this repo>``.
ALLOWED_TOOLS = {"python", "black", "ruff", "pytest"}
#: Modules a task may run with ``python -m``.
ALLOWED_MODULES = {"pytest", "black", "ruff"}
#: Folders task scripts live in.
SCRIPT_DIRS = ("scripts", "client_examples")
#: Tasks the README and the design promise (`pixi run <name>`).
REQUIRED_TASKS = {
    "download-tiny",
    "download-small",
    "download-base",
    "download-large",
    "download-all",
    "export-onnx",
    "setup",
    "serve-local",
    "client",
    "benchmark",
    "loadtest",
    "test",
    "format",
    "lint",
}
#: Script -> other strings whose presence in a test counts as exercising it: the module the
#: script is a thin wrapper of.
EXERCISED_VIA = {
    "scripts/export_onnx.py": ("sam2_triton.cli.export_onnx",),
    "scripts/download_checkpoints.py": ("sam2_triton.cli.download_checkpoints",),
    "scripts/serve_local.py": ("sam2_triton.cli.serve_local",),
}
MODEL_ARTEFACT_SUFFIXES = (".pt", ".pth", ".ckpt", ".onnx", ".onnx.data", ".plan", ".engine")


# --------------------------------------------------------------------------------------------
# pixi.toml
# --------------------------------------------------------------------------------------------


@cache
def pixi() -> dict:
    with PIXI.open("rb") as f:
        return tomllib.load(f)


def all_tasks() -> dict[str, dict]:
    """``"<scope>:<task>" -> task table`` for [tasks] and every [feature.X.tasks]."""
    scopes = {"default": pixi().get("tasks", {})}
    for name, feature in pixi().get("feature", {}).items():
        scopes[f"feature.{name}"] = feature.get("tasks", {})
    tasks = {}
    for scope, table in scopes.items():
        for name, task in table.items():
            if isinstance(task, str):
                task = {"cmd": task}
            elif isinstance(task, list):  # shorthand alias: a list of tasks to run
                task = {"depends-on": task}
            tasks[f"{scope}:{name}"] = task
    return tasks


def task_names() -> set[str]:
    return {key.split(":", 1)[1] for key in all_tasks()}


def commands(task: dict) -> list[list[str]]:
    """The shell commands of a task's ``cmd``, split at ``&&`` into argument lists."""
    cmd = task.get("cmd")
    if cmd is None:
        return []
    if isinstance(cmd, list):
        cmd = shlex.join(cmd)
    return [shlex.split(part) for part in re.split(r"&&|\|\||;", cmd) if part.strip()]


def task_scripts(task: dict) -> list[str]:
    """Repository-relative scripts a task runs with ``python <script>``."""
    return [
        argv[1]
        for argv in commands(task)
        if argv[0] == "python" and len(argv) > 1 and argv[1] != "-m"
    ]


def dependency_names(task: dict) -> list[str]:
    deps = task.get("depends-on", task.get("depends_on", []))
    if isinstance(deps, str):
        deps = [deps]
    return [d["task"] if isinstance(d, dict) else d for d in deps]


TASKS = all_tasks()
SCRIPT_TASKS = [(key, script) for key, task in TASKS.items() for script in task_scripts(task)]


def test_pixi_declares_the_promised_tasks():
    assert task_names() >= REQUIRED_TASKS, sorted(REQUIRED_TASKS - task_names())


def test_pixi_workspace_basics():
    ws = pixi()["workspace"]
    assert ws["channels"] == ["conda-forge"]
    assert "linux-64" in ws["platforms"]
    assert pixi()["dependencies"]["python"] == "3.11.*"
    envs = pixi()["environments"]
    assert {"default", "cuda"} <= set(envs)
    features = pixi()["feature"]
    for env in envs.values():
        for feature in env["features"] if isinstance(env, dict) else env:
            assert feature in features, f"environment uses unknown feature {feature!r}"


@pytest.mark.parametrize("key", sorted(TASKS))
def test_pixi_task_commands_are_thin_calls(key):
    """Each command is ``python <script in this repo>`` or an allowed tool."""
    task = TASKS[key]
    for argv in commands(task):
        program = argv[0]
        assert program in ALLOWED_TOOLS, f"{key}: {program!r} is not an allowed tool"
        if program == "python":
            assert len(argv) > 1, f"{key}: bare python"
            if argv[1] == "-m":
                assert argv[2] in ALLOWED_MODULES, f"{key}: python -m {argv[2]}"
            else:
                script = Path(argv[1])
                assert (
                    not script.is_absolute() and script.parts[0] in SCRIPT_DIRS
                ), f"{key}: {argv[1]} is not under {SCRIPT_DIRS}"
    assert commands(task) or dependency_names(task), f"{key}: neither cmd nor depends-on"


@pytest.mark.parametrize("key,script", SCRIPT_TASKS)
def test_pixi_task_scripts_exist(key, script):
    assert (ROOT / script).is_file(), f"{key}: {script} does not exist (yet)"


@pytest.mark.parametrize("key,script", SCRIPT_TASKS)
def test_pixi_task_flags_are_accepted(key, script):
    """Every ``--flag`` a task passes appears in the script's own ``--help``."""
    if not (ROOT / script).is_file():
        pytest.skip(f"{script} missing (see test_pixi_task_scripts_exist)")
    flags = {
        arg.split("=", 1)[0]
        for argv in commands(TASKS[key])
        if argv[0] == "python" and argv[1] == script
        for arg in argv[2:]
        if arg.startswith("--")
    }
    if not flags:
        return
    proc = subprocess.run(
        [sys.executable, script, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{script} --help failed:\n{proc.stderr}"
    unknown = sorted(f for f in flags if not re.search(rf"{re.escape(f)}(?![\w-])", proc.stdout))
    assert not unknown, f"{key}: {script} does not accept {unknown}"


@pytest.mark.parametrize("key", sorted(k for k in TASKS if dependency_names(TASKS[k])))
def test_pixi_task_dependencies_exist(key):
    missing = [d for d in dependency_names(TASKS[key]) if d not in task_names()]
    assert not missing, f"{key} depends on unknown tasks {missing}"


def test_pixi_setup_downloads_then_exports():
    assert dependency_names(pixi()["tasks"]["setup"]) == ["download-base", "export-onnx"]


def test_pixi_download_tasks_cover_every_size():
    tasks = pixi()["tasks"]
    expected = {f"download-{s.split('_')[0]}": s for s in MODEL_SIZES}  # base_plus: download-base
    for name, size in expected.items():
        [argv] = commands(tasks[name])
        assert argv[1:] == ["scripts/download_checkpoints.py", "--model", size], name
    [argv] = commands(tasks["download-all"])
    assert argv[1:] == ["scripts/download_checkpoints.py", "--all"]


def test_pixi_export_uses_the_downloaded_base_plus():
    [argv] = commands(pixi()["tasks"]["export-onnx"])
    opts = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert argv[1] == "scripts/export_onnx.py"
    assert opts["--model"] == "base_plus"
    assert opts["--checkpoint"] == f"checkpoints/{MODEL_SIZES['base_plus'].checkpoint_file}"
    assert opts["--repository"] == "model_repository"


def test_pixi_serve_local_matches_the_environment():
    """Without a GPU the local server must use the configs/cpu.pbtxt variants."""
    features = pixi()["feature"]
    cpu_cmd = " ".join(" ".join(a) for a in commands(features["cpu"]["tasks"]["serve-local"]))
    gpu_cmd = " ".join(" ".join(a) for a in commands(features["cuda"]["tasks"]["serve-local"]))
    assert f"--config-name {model_config.CPU_CONFIG_NAME}" in cpu_cmd
    assert "--config-name" not in gpu_cmd
    for cmd in (cpu_cmd, gpu_cmd):
        assert "scripts/serve_local.py --repository model_repository" in cmd


@cache
def ci_commands() -> str:
    """.ci/run and the commands it runs (README's, which `.ci/run --print` shows)."""
    printed = subprocess.run(["bash", str(CI_RUN), "--print"], capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    return CI_RUN.read_text() + printed.stdout


@cache
def ci_and_test_sources() -> tuple[str, str]:
    tests = "\n".join(
        p.read_text() for p in sorted((ROOT / "tests").rglob("*.py")) if p.resolve() != THIS
    )
    return ci_commands(), tests


@pytest.mark.parametrize("key,script", SCRIPT_TASKS)
def test_pixi_task_scripts_run_in_ci(key, script):
    """CI (.ci/run) or a test runs each task's script, so a task cannot rot unnoticed."""
    ci, tests = ci_and_test_sources()
    needles = (script, Path(script).name, *EXERCISED_VIA.get(script, ()))
    assert any(n in ci or n in tests for n in needles), f"{key}: nothing in CI runs {script}"


def test_pixi_tool_tasks_match_ci():
    """`pixi run lint` / `test` are the commands CI runs."""
    ci = ci_commands()
    tasks = pixi()["tasks"]
    ci_lines = [line.split() for line in ci.splitlines()]
    for argv in commands(tasks["lint"]) + commands(tasks["test"]):
        runs = any(all(arg in line for arg in argv) for line in ci_lines)
        assert runs, f"CI does not run {shlex.join(argv)}"
    assert commands(tasks["format"]) == [["black", "."]]


def pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def pypi_spec(value) -> SpecifierSet:
    return SpecifierSet(value if isinstance(value, str) else value.get("version", ""))


def test_pixi_dependencies_agree_with_pyproject():
    """pixi.toml spells out pyproject's `serve` extra, with one ONNX Runtime per feature."""
    extras = pyproject()["project"]["optional-dependencies"]
    deps = pixi()["pypi-dependencies"]
    own = deps["sam2-triton"]
    assert own["path"] == "." and own["editable"] is True
    assert set(own["extras"]) == set(extras) - {"serve"}
    features = pixi()["feature"]
    for line in extras["serve"]:
        req = Requirement(line)
        if req.name == "onnxruntime":
            assert pypi_spec(features["cpu"]["pypi-dependencies"]["onnxruntime"]) == req.specifier
            gpu = features["cuda"]["pypi-dependencies"]["onnxruntime-gpu"]
            assert pypi_spec(gpu) == req.specifier
            assert "onnxruntime" not in deps and "onnxruntime-gpu" not in deps
        else:
            assert req.name in deps, f"serve extra's {req.name} missing from pixi.toml"
            assert pypi_spec(deps[req.name]) == req.specifier, req.name


def test_pixi_builds_sam2_like_install_dev():
    """sam2 1.1.0 without build isolation and without its CUDA extension, as install_dev.sh."""
    assert pixi()["pypi-dependencies"]["sam2"] == "==1.1.0"
    assert "sam2" in pixi()["pypi-options"]["no-build-isolation"]
    assert pixi()["activation"]["env"]["SAM2_BUILD_CUDA"] == "0"
    install = (ROOT / "scripts" / "install_dev.sh").read_text()
    assert "SAM2_BUILD_CUDA=0" in install and '"sam2==1.1.0"' in install


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------


@cache
def compose_command() -> tuple[str, ...]:
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ("docker", "compose")
    pytest.fail(
        "no Compose implementation found (docker-compose or the docker compose plugin); "
        "install it with `bash scripts/ci_system_deps.sh`"
    )


def render_compose(tmp_path: Path, **variables: str) -> dict:
    """``docker compose config`` of our file with exactly ``variables`` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAM2_", "COMPOSE_"))}
    env.update(variables)
    empty_env_file = tmp_path / "empty.env"  # ignore a developer's .env next to the file
    empty_env_file.write_text("")
    proc = subprocess.run(
        [
            *compose_command(),
            "--project-name",
            "sam2test",
            "--env-file",
            str(empty_env_file),
            "-f",
            str(COMPOSE),
            "--profile",
            "cpu",
            "config",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"compose config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


def ports(service: dict) -> set[tuple[str, str, int]]:
    """``(host_ip, published, target)`` for short (v1) and long (v2) port syntax."""
    out = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.add((p.get("host_ip", ""), str(p["published"]), int(p["target"])))
        else:
            spec = str(p).split("/")[0]
            host_ip, published, target = spec.rsplit(":", 2)
            out.add((host_ip, published, int(target)))
    return out


def mounts(service: dict) -> dict[str, dict]:
    """Mount target -> ``{type, source, read_only}`` for short (v1) and long (v2) syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out[v["target"]] = {
                "type": v["type"],
                "source": v.get("source"),
                "read_only": bool(v.get("read_only", False)),
            }
        else:
            source, target, *mode = str(v).split(":")
            kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
            options = mode[0].split(",") if mode else []
            out[target] = {"type": kind, "source": source, "read_only": "ro" in options}
    return out


def size_bytes(value) -> int:
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", str(value).strip().lower())
    assert m, f"unreadable size {value!r}"
    return int(float(m[1]) * 1024 ** " kmg".index(m[2] or " "))


def ulimit(service: dict, name: str) -> tuple[int, int]:
    value = service["ulimits"][name]
    if isinstance(value, dict):
        return int(value["soft"]), int(value["hard"])
    return int(value), int(value)


def flag(command: list[str], name: str) -> str | None:
    for arg in command:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    return render_compose(tmp_path_factory.mktemp("compose"))


SERVICES = ("triton", "triton-cpu")


def test_compose_has_the_gpu_and_cpu_services(compose):
    assert set(SERVICES) <= set(compose["services"])
    assert "trt_cache" in compose["volumes"]


@pytest.mark.parametrize("name", SERVICES)
def test_compose_image_is_pinned(compose, name):
    """The services run docker/Dockerfile's image, built on a pinned NGC Triton release: the
    build argument, the Dockerfile's default and the tag name the same release."""
    service = compose["services"][name]
    base = service["build"]["args"]["TRITON_IMAGE"]
    m = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d{2}\.\d{2}-py3)", base)
    assert m, base
    assert service["image"] == f"sam2-triton:{m[1]}"
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"ARG TRITON_IMAGE={base}\nFROM ${{TRITON_IMAGE}}" in dockerfile


@pytest.mark.parametrize("name", SERVICES)
def test_compose_ports_default_to_localhost(compose, name):
    assert ports(compose["services"][name]) == {
        ("127.0.0.1", "8000", 8000),
        ("127.0.0.1", "8001", 8001),
        ("127.0.0.1", "8002", 8002),
    }


def test_compose_bind_address_variable_opens_the_ports(tmp_path):
    rendered = render_compose(tmp_path, SAM2_BIND_ADDRESS="192.0.2.10")
    for name in SERVICES:
        published = ports(rendered["services"][name])
        assert {ip for ip, _, _ in published} == {"192.0.2.10"}, name
        assert {target for _, _, target in published} == {8000, 8001, 8002}


@pytest.mark.parametrize("name", SERVICES)
def test_compose_command_is_locked_down(compose, name):
    command = compose["services"][name]["command"]
    assert command[0] == "tritonserver"
    assert flag(command, "--model-repository") == "/models"
    assert flag(command, "--model-control-mode") == "none"
    assert flag(command, "--strict-readiness") == "true"
    assert flag(command, "--log-verbose") == "0"
    assert int(flag(command, "--http-max-input-size")) <= 64 << 20
    expected = model_config.CPU_CONFIG_NAME if name == "triton-cpu" else None
    assert flag(command, "--model-config-name") == expected


@pytest.mark.parametrize("name", SERVICES)
def test_compose_mounts_the_repository_read_only(compose, name):
    m = mounts(compose["services"][name])["/models"]
    assert m["type"] == "bind" and m["read_only"], m
    assert Path(m["source"]).resolve() == (ROOT / "model_repository").resolve()


def test_compose_trt_cache_is_a_named_volume_where_the_configs_point(compose):
    m = mounts(compose["services"]["triton"])[model_config.RepositoryParams().trt_cache_dir]
    assert m["type"] == "volume" and not m["read_only"], m
    assert m["source"] in ("trt_cache", "sam2test_trt_cache")
    cache_dir = model_config.RepositoryParams().trt_cache_dir
    for rel, config in model_config.repository_configs().items():
        for acc in config.optimization.execution_accelerators.gpu_execution_accelerator:
            if acc.name == "tensorrt":
                assert acc.parameters["trt_engine_cache_path"].startswith(cache_dir + "/"), rel


def test_compose_keeps_the_video_compilers_caches_in_the_cache_volume(compose):
    """sam2_video compiles its tracker at load on a GPU (the default): torch.compile's and
    Triton's caches are set to folders of the cache volume, so a restart reads them."""
    service = compose["services"]["triton"]
    cache_dir = model_config.RepositoryParams().trt_cache_dir
    assert mounts(service)[cache_dir]["type"] == "volume"
    assert model_config.VideoServing().torch_compile == "reduce-overhead"
    env = service["environment"]
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert env[name].startswith(cache_dir + "/"), name


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(value))
    assert m, f"unreadable duration {value!r}"
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


@pytest.mark.parametrize("name", SERVICES)
def test_compose_healthcheck_restart_and_limits(compose, name):
    """The healthcheck runs the project's probe (every model must answer, not only Triton's
    ready flag), mounted from the package, and stops a server that went bad so that the
    restart policy starts a new one."""
    service = compose["services"][name]
    check = service["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python3", "/opt/sam2-triton/health.py"], check
    mount = mounts(service)["/opt/sam2-triton/health.py"]
    assert mount["read_only"]
    assert Path(mount["source"]).resolve() == ROOT / "src" / "sam2_triton" / "health.py"
    from sam2_triton.health import build_parser

    args = build_parser().parse_args(check[3:])  # the flags exist and parse
    assert args.url.endswith(":8000") and args.stop_after >= 2 and args.stop_pid == 1
    assert args.timeout < _seconds(service["healthcheck"]["timeout"])
    assert service["restart"] == "unless-stopped"
    assert ulimit(service, "memlock") == (-1, -1)
    assert ulimit(service, "stack") == (67108864, 67108864)
    assert size_bytes(service["shm_size"]) >= 1 << 30


def test_compose_reserves_gpus_for_the_gpu_service_only(compose, tmp_path):
    def devices(rendered, name):
        deploy = rendered["services"][name].get("deploy") or {}
        return deploy.get("resources", {}).get("reservations", {}).get("devices", [])

    [gpu] = devices(compose, "triton")
    assert gpu["driver"] == "nvidia"
    assert "gpu" in gpu["capabilities"]
    assert str(gpu["count"]) in ("all", "-1")
    assert devices(compose, "triton-cpu") == []
    [one] = devices(render_compose(tmp_path, SAM2_GPU_COUNT="1"), "triton")
    assert int(one["count"]) == 1


def test_compose_flags_are_the_ones_security_md_documents(compose):
    security = (ROOT / "SECURITY.md").read_text()
    command = compose["services"]["triton"]["command"]
    assert f"--http-max-input-size={flag(command, '--http-max-input-size')}" in security
    assert "--model-control-mode=none" in security
    assert f"at most {model_config.MAX_POINTS} prompt points" in security


def test_ci_installs_the_compose_implementation():
    """A fresh CI machine needs docker-compose for the tests above."""
    script = ROOT / "scripts" / "ci_system_deps.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    callers = [CI_RUN, ROOT / "scripts" / "install_dev.sh"]
    assert any(
        "ci_system_deps.sh" in p.read_text() for p in callers
    ), "call `bash scripts/ci_system_deps.sh` from .ci/run"


# --------------------------------------------------------------------------------------------
# model_repository/ and git
# --------------------------------------------------------------------------------------------


def tracked_files() -> list[str]:
    proc = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout: {proc.stderr.strip()}")
    return [f for f in proc.stdout.split("\0") if f]


def test_committed_configs_equal_the_generated_ones():
    """Committed defaults never drift from sam2_triton.model_config."""
    prefix = "model_repository/"
    relative = [f[len(prefix) :] for f in tracked_files() if f.startswith(prefix)]
    committed = sorted(
        f for f in relative if re.fullmatch(r"[^/]+/(config|configs/[^/]+)\.pbtxt", f)
    )
    generated = model_config.repository_configs()
    assert committed == sorted(generated)
    for rel in committed:
        parsed = model_config.read_config(ROOT / prefix / rel)  # Triton's ModelConfig protobuf
        assert parsed == generated[rel], f"{prefix}{rel} differs from model_config; regenerate it"


def test_no_model_artefacts_are_tracked():
    artefacts = [f for f in tracked_files() if f.lower().endswith(MODEL_ARTEFACT_SUFFIXES)]
    assert not artefacts, f"model files must not be committed: {artefacts}"


def test_dockerfile_installs_the_python_backends_where_triton_looks():
    """NGC's Triton finds a Python-based backend at <backend-directory>/<backend>/model.py;
    the image puts sam2_session's and sam2_video's there, with the packages their modules
    import, pinned as CI tests them."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    params = model_config.RepositoryParams()
    backends = {
        model_config.session_config(params).backend,
        model_config.video_config(params).backend,
    }
    looped = re.search(r"for backend in ([\w ]+); do", dockerfile)
    assert looped and set(looped[1].split()) == backends
    assert '"$package/backend/$backend/model.py"' in dockerfile
    assert '"/opt/tritonserver/backends/$backend/model.py"' in dockerfile
    for backend in backends:
        assert (ROOT / "src" / "sam2_triton" / "backend" / backend / "model.py").is_file()
    for package in ("onnxruntime-gpu==", "pillow==", "opencv-python-headless=="):
        assert package in dockerfile, package
    constraints = (ROOT / ".ci" / "constraints.txt").read_text()
    for package in ("torch", "hydra-core", "iopath"):  # the versions CI tests
        version = re.search(rf"^{package}==(\S+)$", constraints, re.M)[1]
        assert f'"{package}=={version}"' in dockerfile, package
    # Meta's package as scripts/install_dev.sh installs it: its Python only, after torch.
    install = (ROOT / "scripts" / "install_dev.sh").read_text()
    sam2 = re.search(r'"sam2==[^"]+"', install)[0]
    assert f"SAM2_BUILD_CUDA=0 python3 -m pip install --no-build-isolation --no-deps {sam2}" in (
        dockerfile
    )


def _package_imports() -> dict[str, set[str]]:
    """Each module of sam2_triton and the modules of the package it imports, anywhere in the
    file (an import inside a function is an edge too)."""
    import ast

    root = ROOT / "src"
    modules = {}
    for path in (root / "sam2_triton").rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_modules_import_downward_only():
    """No import circles in the package: walking the imports from any module never leads
    back to it."""
    graph = _package_imports()
    circles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module == start:
                circles.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
    assert not circles, f"modules on an import circle: {sorted(circles)}"
