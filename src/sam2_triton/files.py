"""Writing files so that a reader never sees half of one: a temporary name, then a rename.

Every file this project writes for others to read (ONNX graphs, configs, checkpoints, masks,
benchmark results) goes through here, so an interrupted writer leaves either the old file or
the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from sam2_triton.models import UserError


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_partials(final: Path) -> None:
    """Delete partial files a killed writer of ``final`` left behind (its pid is gone)."""
    for partial in final.parent.glob(f".{final.name}.*.partial"):
        try:
            os.kill(int(partial.name.rsplit(".", 2)[-2]), 0)
        except ValueError:
            continue  # not one of ours
        except ProcessLookupError:
            partial.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; :class:`UserError` (one line) if it cannot."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from e
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8."""
    return write_bytes_atomic(path, text.encode())
