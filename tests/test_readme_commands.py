"""README's two commands (install, test) are the ones CI runs, and they need nothing else.

``.ci/run`` reads its commands from README.md, so the two cannot drift; these tests pin that
link, and run ``scripts/ci_system_deps.sh`` (the one list of system packages, which
``install_dev.sh`` runs first) for real: on this machine, and with a PATH that holds only a
few tools, as on a machine without apt-get and docker-compose.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
SYSTEM_DEPS = ROOT / "scripts" / "ci_system_deps.sh"


def readme_ci_block() -> str:
    """The bash block README marks as CI's commands, found independently of .ci/run."""
    match = re.search(r"<!-- ci-commands[^>]*-->\n```bash\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md has no bash block after <!-- ci-commands ... -->"
    return match.group(1)


def test_ci_runs_the_readme_commands_as_written():
    proc = subprocess.run(
        ["bash", str(CI_RUN), "--print"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == readme_ci_block()
    install, test = proc.stdout.splitlines()
    assert install == "bash scripts/install_dev.sh .venv && . .venv/bin/activate"
    assert test == "ruff check . && black --check . && python -m pytest"
    # The block is README's "Tests" section, where a reader looks for it.
    tests_section = README.read_text().split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    assert proc.stdout in tests_section


def test_install_runs_the_system_packages_script_first():
    install = (ROOT / "scripts" / "install_dev.sh").read_text()
    assert install.index("ci_system_deps.sh") < install.index("-m venv")


def run_system_deps(path: str) -> subprocess.CompletedProcess:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run(
        ["bash", str(SYSTEM_DEPS)], capture_output=True, text=True, env=env, timeout=120
    )


def test_system_packages_already_here_is_a_quiet_no_op():
    proc = run_system_deps(os.environ["PATH"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == proc.stderr == ""


def test_without_apt_the_missing_packages_are_named(tmp_path: Path):
    """A machine with Python, git and curl but no docker-compose and no apt-get."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "git", "curl", "id", "mktemp", "cat", "rm", "env"):
        (tools / tool).symlink_to(shutil.which(tool))
    (tools / "python3").symlink_to(sys.executable)
    proc = run_system_deps(str(tools))
    assert proc.returncode == 1
    assert proc.stdout == ""
    prefix, suffix = "ci_system_deps.sh: no apt-get here; install ", " by hand\n"
    assert proc.stderr.startswith(prefix) and proc.stderr.endswith(suffix), proc.stderr
    named = proc.stderr[len(prefix) : -len(suffix)].split()
    assert "docker-compose" in named
    # What this PATH has is not asked for: git, curl, this Python's venv and libpython.
    assert not [n for n in named if n in ("git", "curl") or n.startswith(("python", "libpy"))]
