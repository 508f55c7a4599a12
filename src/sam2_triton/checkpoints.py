"""Download Meta's SAM2.1 checkpoints: resumable, atomic, verified.

``download_checkpoint`` fetches ``{base_url}/{checkpoint_file}`` into
``dest_dir/<checkpoint_file>``:

* the bytes go to ``<checkpoint_file>.partial`` beside the target; an interrupted transfer
  leaves it there and the next run asks the server for the rest with ``Range: bytes=N-``
  (a server that answers ``200`` instead of ``206`` is downloaded again from zero);
* the finished file is checked against ``Content-Length``/``Content-Range``, then loaded and
  compared, tensor by tensor, with the model that the size's config builds; only then is it
  renamed to its final name, so a file under that name is always complete and loadable;
* a file that does not verify is deleted: resuming it could only repeat the same bytes;
* its SHA-256 is compared with ``--sha256`` if given, else with what ``SHA256SUMS`` in
  ``dest_dir`` recorded for an earlier download of it, and then recorded there
  (:mod:`sam2_triton.checksums`); a file already there is checked against that record, so a
  byte changed on disk since it was downloaded is refused here and by the export.

Every failure raises :class:`~sam2_triton.models.UserError` with one line naming the URL or
file and what went wrong.

The base URL defaults to Meta's release folder. Mirrors and air-gapped setups put the four
files in one folder served over HTTP(S) and point ``--base-url`` or the
``SAM2_CHECKPOINT_BASE_URL`` environment variable at it (e.g. ``python -m http.server`` in
that folder gives ``http://host:8000``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from sam2_triton.checksums import (
    SUMS_FILE,
    check_sha256,
    file_sha256,
    parse_sha256,
    record_sha256,
    recorded_sha256,
)
from sam2_triton.export import check_state_dict, read_checkpoint
from sam2_triton.models import CHECKPOINT_BASE_URL, ModelSize, UserError

if TYPE_CHECKING:
    import requests

#: Environment variable that overrides :data:`~sam2_triton.models.CHECKPOINT_BASE_URL`.
BASE_URL_ENV = "SAM2_CHECKPOINT_BASE_URL"

#: Seconds to wait for a connection, and then for each piece of the answer.
DEFAULT_TIMEOUT = 60.0

# Small enough that little is lost when a transfer breaks: urllib3 drops the bytes of the
# chunk it was filling when the connection closes early.
_CHUNK = 1 << 18
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


def default_base_url() -> str:
    """``$SAM2_CHECKPOINT_BASE_URL`` if set and not empty, else Meta's release folder."""
    return os.environ.get(BASE_URL_ENV, "").strip() or CHECKPOINT_BASE_URL


def checkpoint_url(size: ModelSize, base_url: str = CHECKPOINT_BASE_URL) -> str:
    """The URL of ``size``'s checkpoint under ``base_url``."""
    return f"{base_url.rstrip('/')}/{size.checkpoint_file}"


def partial_path(final: Path) -> Path:
    """Where the bytes of ``final`` accumulate until the download is complete and verified."""
    return final.with_name(final.name + ".partial")


def verify_checkpoint(path: str | os.PathLike, size: ModelSize) -> None:
    """Raise :class:`UserError` unless ``path`` loads as a SAM2.1 checkpoint of ``size``.

    The same checks ``export.load_sam2`` makes, so a checkpoint that verifies here exports.
    """
    from sam2.build_sam import build_sam2

    # read_checkpoint turns any damaged file into one UserError line.
    found = read_checkpoint(path)
    model = build_sam2(size.config, ckpt_path=None, device="cpu")
    check_state_dict(model.state_dict(), found, size, path)


def download_checkpoint(
    size: ModelSize,
    dest_dir: Path,
    base_url: str = CHECKPOINT_BASE_URL,
    *,
    verify: bool = True,
    sha256: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool | None = None,
) -> Path:
    """Download ``size``'s checkpoint into ``dest_dir`` and return its path.

    ``sha256``: the digest the file must have; without it, the one ``dest_dir/SHA256SUMS``
    recorded for an earlier download of this file, if any. The file's digest is recorded
    there once it is saved. An existing file under the final name is kept (no request is
    made) if it matches that digest, or, with nothing recorded, if it verifies; otherwise
    :class:`UserError`. ``verify=False`` skips loading the file (the byte count and the
    SHA-256 are still checked). ``progress=None`` shows a bar only on a terminal.
    """
    import requests

    dest_dir = Path(dest_dir)
    final = dest_dir / size.checkpoint_file
    partial = partial_path(final)
    expected = parse_sha256(sha256) if sha256 is not None else None
    url, auth = split_credentials(checkpoint_url(size, base_url))
    if urlsplit(url).scheme not in ("http", "https"):
        raise UserError(f"base URL {split_credentials(base_url)[0]!r} is not an http(s) URL")

    if final.exists():
        _check_existing(final, size, expected, verify)
        return final

    want = expected or recorded_sha256(final)  # read first: a damaged record fails early
    with requests.Session() as session:
        session.auth = auth
        _fetch(session, url, partial, timeout, progress)

    digest = file_sha256(partial)
    if want is not None and digest != want:
        partial.unlink(missing_ok=True)
        if expected is not None:
            raise UserError(
                f"download of {url} is corrupt and was deleted: SHA-256 {digest}, not the "
                f"expected {want} (--sha256)"
            )
        raise UserError(
            f"download of {url} was deleted: SHA-256 {digest}, but an earlier download of "
            f"it recorded {want} in {dest_dir / SUMS_FILE} (if the remote file really "
            "changed, delete that line)"
        )
    if verify:
        try:
            verify_checkpoint(partial, size)
        except UserError as e:
            partial.unlink(missing_ok=True)
            raise UserError(f"download of {url} is corrupt and was deleted: {e}") from None
    os.replace(partial, final)
    record_sha256(final, digest)
    _say(f"saved {final} ({final.stat().st_size / 2**20:.1f} MiB, SHA-256 {digest})")
    return final


def _check_existing(final: Path, size: ModelSize, expected: str | None, verify: bool) -> None:
    """Keep the checkpoint already at ``final`` if it checks out, else :class:`UserError`."""
    hint = " (it already exists: delete it to download it again)"
    try:
        digest = check_sha256(final, expected)
    except UserError as e:
        # A changed file's message already says what to do.
        raise UserError(f"{e}{hint}" if expected is not None else str(e)) from None
    if digest is not None and expected is None:
        # Equal bytes verify equally, so the loading check made when the digest was
        # recorded is not repeated (after --no-verify none was made; the export's own
        # loading check still is).
        _say(f"{final} already exists and matches {SUMS_FILE}, skipping download")
        return
    if verify:
        try:
            verify_checkpoint(final, size)
        except UserError as e:
            raise UserError(f"{e}{hint}") from None
    record_sha256(final, digest or file_sha256(final))
    how = "verifies" if verify else "was not verified (--no-verify)"
    _say(f"{final} already exists and {how}, skipping download; SHA-256 recorded in {SUMS_FILE}")


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without ``user:password@`` and those credentials for HTTP Basic auth.

    A mirror may need credentials in its URL; taking them out before anything is printed
    keeps them out of every message and log line.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    auth = (unquote(parts.username or ""), unquote(parts.password or ""))
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])), auth


def _say(message: str) -> None:
    # stdout, so that stderr carries nothing but the one error line when something fails.
    print(message, flush=True)


def _fetch(
    session: "requests.Session", url: str, partial: Path, timeout: float, progress: bool | None
) -> None:
    """Bring ``partial`` to the complete remote file, resuming what is already there."""
    import requests

    # Two rounds at most: the second starts from zero after the first found that the
    # partial file does not fit the remote one (416 with another size: the file changed).
    for _ in range(2):
        offset = partial.stat().st_size if partial.is_file() else 0
        # identity: a compressed answer would make byte offsets and Content-Length disagree
        # with the bytes on disk, and resuming needs them to agree.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = session.get(url, headers=headers, stream=True, timeout=timeout)
        except requests.RequestException as e:
            problem = _network_problem(e, url, timeout)
            raise UserError(f"download of {url} failed: {problem}") from None
        with resp:
            action, total = _plan(resp, url, offset)
            if action == "complete":
                return
            if action == "restart":
                _say(f"{partial} does not fit {url}, downloading it again from zero")
                partial.unlink()
                continue
            if action == "append":
                _say(f"resuming {url} at {offset / 2**20:.1f} MiB")
            elif offset:
                _say(f"{url}: the server does not resume downloads, starting again from zero")
            else:
                _say(f"downloading {url}")
            start = offset if action == "append" else 0
            _write_body(resp, url, partial, total, start, timeout, progress)
            return
    raise AssertionError("unreachable: the second round never sends a Range header")


def _plan(resp: "requests.Response", url: str, offset: int) -> tuple[str, int | None]:
    """Decide from the answer's status and headers what to do with the partial file.

    Returns the action, ``"complete"`` (it already is the whole file), ``"restart"`` (it
    does not fit the remote file), ``"append"`` (the body continues it) or ``"overwrite"``
    (the body is the whole file), and the remote file's size if the server said it.
    """
    status = resp.status_code
    if status == 416 and offset:
        # Range past the end: complete if the server's size is ours, else the file changed.
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if match and match.group(3) != "*" and int(match.group(3)) == offset:
            return "complete", offset
        return "restart", None
    if status >= 400:
        reason = f" {resp.reason}" if resp.reason else ""
        raise UserError(f"download of {url} failed: HTTP {status}{reason}")
    length_header = resp.headers.get("Content-Length", "")
    length = int(length_header) if length_header.isdigit() else None
    if status == 206:
        content_range = resp.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.fullmatch(content_range.strip())
        if not match or match.group(1) is None or int(match.group(1)) != offset:
            # Not the range we asked for: appending it would corrupt the file.
            raise UserError(
                f"download of {url} failed: the server answered Range: bytes={offset}- "
                f"with Content-Range {content_range!r}"
            )
        total = None if match.group(3) == "*" else int(match.group(3))
        if total is None and length is not None:
            total = offset + length
        return "append", total
    if status != 200:
        raise UserError(f"download of {url} failed: unexpected HTTP {status} {resp.reason}")
    return "overwrite", length


def _write_body(
    resp: "requests.Response",
    url: str,
    partial: Path,
    total: int | None,
    start: int,
    timeout: float,
    progress: bool | None,
) -> None:
    """Stream the answer's body into ``partial`` from byte ``start`` and check its length."""
    import requests
    from tqdm import tqdm

    done = start
    bar = tqdm(
        total=total,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=partial.name.removesuffix(".partial"),
        disable=None if progress is None else not progress,
    )
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        with bar, open(partial, "ab" if start else "wb") as f:
            for chunk in resp.iter_content(chunk_size=_CHUNK):
                f.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
            f.flush()
            # On disk before verification and rename, so a crash cannot leave the final
            # name pointing at bytes that never left the page cache.
            os.fsync(f.fileno())
    # requests' exceptions subclass OSError: the network ones must be caught first.
    except requests.RequestException as e:
        problem = _network_problem(e, url, timeout, mid_body=True)
        raise _interrupted(url, partial, done, total, problem) from None
    except OSError as e:
        # Disk full or no permission: the bytes so far are fine, keep them for a rerun.
        raise UserError(f"cannot write {partial}: {e.strerror or e}") from None
    if total is not None and done < total:
        raise _interrupted(url, partial, done, total, "the connection closed early")
    if total is not None and done > total:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"download of {url} is corrupt and was deleted: {done} bytes instead of the "
            f"{total} announced"
        )


def _interrupted(url: str, partial: Path, done: int, total: int | None, problem: str) -> UserError:
    """The error for a transfer cut short; the partial file stays for the next run to resume."""
    of = f" of {total}" if total is not None else ""
    if done == 0:
        partial.unlink(missing_ok=True)  # an empty file has nothing to resume
        then = "run again to retry"
    else:
        then = f"run again to resume from {partial}"
    return UserError(f"download of {url} interrupted after {done}{of} bytes ({problem}); {then}")


def _network_problem(exc: BaseException, url: str, timeout: float, mid_body: bool = False) -> str:
    """A short reason for a failed request, without urllib3's object reprs and retry text."""
    import socket

    import requests

    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return "not a valid URL"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"timed out connecting to {host}:{port} after {timeout:g} s"
    if isinstance(exc, requests.exceptions.ReadTimeout) or _caused_by(exc, "ReadTimeoutError"):
        what = "no data" if mid_body else "no answer"
        return f"{what} from {host}:{port} for {timeout:g} s"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS error with {host}:{port}"
    if mid_body:
        return "the connection was dropped"
    root = _root_os_error(exc)
    if isinstance(root, socket.gaierror) or _caused_by(exc, "NameResolutionError"):
        detail = f" ({root.strerror})" if root is not None and root.strerror else ""
        return f"cannot resolve host {host!r}{detail}; offline, or a wrong base URL?"
    if isinstance(root, ConnectionRefusedError):
        return f"connection refused by {host}:{port}; offline, or a wrong base URL?"
    if root is not None:
        return f"cannot connect to {host}:{port}: {root.strerror}"
    if isinstance(exc, requests.ConnectionError):
        return f"connection to {host}:{port} failed"
    return type(exc).__name__


def _chain(exc: BaseException):
    """Every exception ``exc`` wraps: causes, contexts, urllib3's ``reason`` and ``args``."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend((e.__cause__, e.__context__, getattr(e, "reason", None), *e.args))


def _caused_by(exc: BaseException, type_name: str) -> bool:
    return any(type(e).__name__ == type_name for e in _chain(exc))


def _root_os_error(exc: BaseException) -> OSError | None:
    # requests' own exceptions subclass OSError too, but only socket errors carry strerror.
    return next((e for e in _chain(exc) if isinstance(e, OSError) and e.strerror), None)
