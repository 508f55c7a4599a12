"""SHA-256 of checkpoint files, recorded in a ``SHA256SUMS`` file beside them.

The file has ``sha256sum``'s format (``<64 hex digits>  <file name>`` per line), so
``cd checkpoints && sha256sum -c SHA256SUMS`` checks it without this project. The downloader
records each checkpoint's digest once the file is complete and verified; every later use (a
download run that finds the file, the export) recomputes the digest and refuses a file whose
bytes changed since. ``--sha256`` on either command states the digest the file must have,
e.g. one published next to a mirror's copy; it takes the place of the recorded one.

Each check reads the whole file once more (what that costs per size: SETUP.md).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from sam2_triton.files import write_text_atomic
from sam2_triton.models import UserError

#: Name of the sums file in a checkpoint folder (the name Debian and Ubuntu mirrors use).
SUMS_FILE = "SHA256SUMS"

_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]{64}")
# sha256sum writes "<hex>  <name>" (text mode) or "<hex> *<name>" (binary mode); a leading
# backslash marks a name with escaped characters, which our file names never need.
_LINE = re.compile(r"\\?([0-9a-fA-F]{64}) [ *](.+)")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of the file at ``path`` as 64 lowercase hex digits; UserError if unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return digest.hexdigest()


def parse_sha256(text: str) -> str:
    """``text`` as a SHA-256 digest (64 hex digits, any case) in lowercase, or UserError."""
    value = text.strip().lower()
    if not _HEX.fullmatch(value):
        raise UserError(f"not a SHA-256 digest (64 hex digits): {text!r}")
    return value


def sums_path(checkpoint: str | os.PathLike) -> Path:
    """The sums file that records ``checkpoint``: ``SHA256SUMS`` in the same folder."""
    return Path(checkpoint).parent / SUMS_FILE


def read_sums(sums: Path) -> dict[str, str]:
    """File name → digest from a ``sha256sum``-format file (empty if there is none).

    A line that is not in that format is refused rather than skipped: a damaged sums file
    must not quietly turn the check off.
    """
    try:
        text = sums.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {sums}: {getattr(e, 'strerror', None) or e}") from None
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line)
        if not match:
            raise UserError(
                f"{sums} line {number} is not '<sha256>  <file name>' (sha256sum's format): "
                f"{line[:80]!r}"
            )
        entries[match.group(2)] = match.group(1).lower()
    return entries


def recorded_sha256(checkpoint: str | os.PathLike) -> str | None:
    """The digest ``SHA256SUMS`` beside ``checkpoint`` records for it, if any."""
    return read_sums(sums_path(checkpoint)).get(Path(checkpoint).name)


def record_sha256(checkpoint: str | os.PathLike, digest: str) -> Path:
    """Record ``digest`` for ``checkpoint`` in the sums file beside it; keep other entries."""
    sums = sums_path(checkpoint)
    entries = read_sums(sums)
    entries[Path(checkpoint).name] = parse_sha256(digest)
    lines = [f"{value}  {name}\n" for name, value in sorted(entries.items())]
    return write_text_atomic(sums, "".join(lines))


def check_sha256(checkpoint: str | os.PathLike, expected: str | None = None) -> str | None:
    """Refuse ``checkpoint`` unless its bytes have the digest it must have.

    That digest is ``expected`` (``--sha256``) if given, else the one ``SHA256SUMS`` beside
    the file records. Returns the file's digest, or None when there is nothing to compare
    with (no ``expected``, no entry): then the file is not read.
    """
    path = Path(checkpoint)
    recorded = None if expected is not None else recorded_sha256(path)
    want = parse_sha256(expected) if expected is not None else recorded
    if want is None:
        return None
    found = file_sha256(path)
    if found == want:
        return found
    if expected is not None:
        raise UserError(f"{path} has SHA-256 {found}, not the expected {want} (--sha256)")
    raise UserError(
        f"{path} changed since it was downloaded: its SHA-256 is {found}, but "
        f"{sums_path(path)} records {want} (delete it and download it again)"
    )
