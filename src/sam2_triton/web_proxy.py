"""The browser page and Triton's HTTP/REST API on one origin, through nginx, without Docker.

``serve_local.py --web PORT`` runs ``deploy/nginx/web.conf``, the configuration of
docker-compose.yml's ``web`` service, with the system's nginx (Debian's 1.22 in CI). Three
lines differ, each replaced where it stands (exactly one match, or an error): the upstream
(``server triton:8000 resolve;``, compose's service name resolved at run time, which needs
nginx 1.27.3) becomes the local Triton's address, ``listen 8080;`` the address and port
asked for, and the static folder of ``sam2-rest.conf`` (``root /srv/sam2/www;``) a copy of
the page (``web/``) in a private folder. Everything else (the request bounds that keep
requests which crash Triton 2.51 away from it, the body limits, the allow-list, the rate
limit) is the very text compose, Kubernetes and SECURITY.md use.

Why nginx rather than a small Python proxy: those bounds are nginx configuration, run by
CI against the real Triton; a Python proxy would be a second implementation of them to keep
equal (and tested), and it would copy every request body through Python. The cost is a
system package (``apt-get install nginx``; ``scripts/ci_system_deps.sh`` installs it).

The page is copied because nginx's workers read it: under a root master they run as
``nobody``, which cannot read a checkout in a private home folder. Edits to ``web/`` show
after a restart.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sam2_triton.models import UserError
from sam2_triton.server import port_in_use

#: The checkout this package lives in (``src/sam2_triton/..``): the page and the proxy's
#: configuration are files of the repository, not of the installed package.
CHECKOUT = Path(__file__).resolve().parents[2]
WEB_DIR = CHECKOUT / "web"
NGINX_DIR = CHECKOUT / "deploy" / "nginx"
#: The server configuration of compose's ``web`` service.
SERVER_CONF = "web.conf"
#: The shared pieces it includes (as ``sam2/<name>``).
SHARED_CONFS = ("sam2-bounds.conf", "sam2-limits.conf", "sam2-rest.conf")
#: Lines replaced for a local Triton, as regular expressions matching one whole line.
UPSTREAM_LINE = r"^    server triton:8000 resolve;$"
LISTEN_LINE = r"^    listen 8080;$"
STATIC_ROOT_LINE = r"^    root /srv/sam2/www;$"


def replace_line(text: str, pattern: str, replacement: str, where: str) -> str:
    """``text`` with the one line matching ``pattern`` replaced; :class:`UserError` unless
    exactly one line matches (the shipped file changed under this code)."""
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise UserError(f"{where}: expected one line matching {pattern!r}, found {count}")
    return new


def host_port(host: str, port: int) -> str:
    """``host:port`` as nginx writes it (IPv6 addresses in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_address(host: str) -> str:
    """The address that reaches a server bound to ``host`` from this machine: loopback for
    a wildcard address."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def upstream_address(host: str, port: int) -> str:
    """Where the proxy reaches a Triton bound to ``host:port``."""
    return host_port(local_address(host), port)


def find_nginx() -> str:
    """The nginx binary, or :class:`UserError` saying how to install it."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise UserError(
            "nginx is not installed; --web serves the page through it "
            "(Debian/Ubuntu: apt-get install nginx)"
        )
    return found


def nginx_mime_types(nginx: str) -> Path:
    """The ``mime.types`` beside the nginx installation's own configuration."""
    proc = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=30)
    found = re.search(r"--conf-path=(\S+)", proc.stderr)
    conf_dir = Path(found.group(1)).parent if found else Path("/etc/nginx")
    path = conf_dir / "mime.types"
    if not path.is_file():
        raise UserError(f"nginx's mime.types not found at {path}")
    return path


class WebProxy:
    """nginx serving ``www`` and forwarding ``/v2`` to the Triton at ``upstream``
    (``"127.0.0.1:8000"``), listening on ``host:port``, with ``deploy/nginx/web.conf``.

    Use as a context manager, or :meth:`start` then :meth:`stop`. ``url`` is the page's
    address.
    """

    def __init__(
        self,
        upstream: str,
        port: int,
        host: str = "127.0.0.1",
        *,
        www: Path = WEB_DIR,
        nginx_dir: Path = NGINX_DIR,
    ) -> None:
        self.upstream = upstream
        self.port = port
        self.host = host
        self.www = Path(www)
        self.nginx_dir = Path(nginx_dir)
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{host_port(local_address(self.host), self.port)}/"

    def check(self) -> str:
        """Everything that can be checked before starting; returns the nginx binary."""
        if not 0 < self.port < 65536:
            raise UserError(f"port {self.port} is not in 1..65535")
        missing = [
            str(p)
            for p in [self.www / "index.html", self.nginx_dir / SERVER_CONF]
            + [self.nginx_dir / name for name in SHARED_CONFS]
            if not p.is_file()
        ]
        if missing:
            raise UserError(
                f"--web needs the page and the proxy's files of a sam2-triton checkout; "
                f"missing: {', '.join(missing)}"
            )
        nginx = find_nginx()
        if port_in_use(self.port, self.host):
            raise UserError(f"web port {self.port} on {self.host} is already in use")
        return nginx

    def configure(self, workdir: Path, nginx: str) -> Path:
        """Write the configuration into ``workdir`` (nginx's prefix); return the main file."""
        (workdir / "sam2").mkdir()
        for name in SHARED_CONFS:
            text = (self.nginx_dir / name).read_text()
            if name == "sam2-rest.conf":
                text = replace_line(text, STATIC_ROOT_LINE, f"    root {workdir / 'www'};", name)
            (workdir / "sam2" / name).write_text(text)
        server = (self.nginx_dir / SERVER_CONF).read_text()
        server = replace_line(server, UPSTREAM_LINE, f"    server {self.upstream};", SERVER_CONF)
        listen = f"    listen {host_port(self.host, self.port)};"
        server = replace_line(server, LISTEN_LINE, listen, SERVER_CONF)
        (workdir / SERVER_CONF).write_text(server)
        shutil.copy2(nginx_mime_types(nginx), workdir / "mime.types")
        shutil.copytree(self.www, workdir / "www")
        # A root master's workers run as nobody: they must reach the page and the
        # temporary folders nginx makes for them, whatever the checkout's modes.
        for path in [workdir, *(workdir / "www").rglob("*"), workdir / "www"]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        main = workdir / "nginx.conf"
        main.write_text(f"""# Written by sam2_triton.web_proxy for serve_local.py --web.
worker_processes 1;
pid {workdir}/nginx.pid;
error_log stderr error;
events {{ worker_connections 256; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {SERVER_CONF};
}}
""")
        return main

    def start(self, stdout=None, stderr=None) -> WebProxy:
        """Check, configure, start nginx and wait until it listens."""
        nginx = self.check()
        self.workdir = Path(tempfile.mkdtemp(prefix="sam2-web-"))
        try:
            main = self.configure(self.workdir, nginx)
            cmd = [nginx, "-e", "stderr", "-p", str(self.workdir), "-c", str(main)]
            test = subprocess.run([*cmd, "-t", "-q"], capture_output=True, text=True, timeout=30)
            if test.returncode != 0:
                lines = test.stderr.strip().splitlines() or ["no output"]
                raise UserError(f"nginx refused the web proxy's configuration: {lines[-1]}")
            self.process = subprocess.Popen(
                [*cmd, "-g", "daemon off;"],
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # Ctrl-C reaches us; we stop nginx after Triton
            )
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, timeout: float = 10) -> None:
        address = local_address(self.host)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise UserError(f"nginx exited with code {code} (its messages are above)")
            with contextlib.suppress(OSError), socket.create_connection((address, self.port), 0.2):
                return
            time.sleep(0.05)
        raise UserError(f"nginx does not listen on port {self.port} after {timeout:.0f} s")

    def drain(self) -> None:
        """Begin a graceful stop (SIGQUIT): nginx takes no new connections, finishes the
        requests in flight, then closes its idle connections to Triton, whose own drain
        would otherwise wait for them until its exit timeout."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)

    def stop(self, timeout: float = 10) -> None:
        """Stop nginx (SIGTERM: its fast shutdown) and remove its folder. Idempotent."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> WebProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
