#!/usr/bin/env python3
"""Pack the Python packages the GPU machine lacks into parts the device tool can carry.

The lent GPU machine has torch, onnx and a CPU-only onnxruntime, and no network. It needs
onnxruntime-gpu (CUDA 13), the embedded tritonserver (nvidia-pytriton), tritonclient with its
compiled dependencies for Python 3.12, and Meta's pure-Python ``sam2`` with hydra. This script
downloads nothing: it takes the wheels ``pip download`` put in ``--wheels`` and the pure-Python
packages installed in this environment, and writes ONE ``.tar.xz`` of a site-packages tree,
split into parts of at most ``--part-mib`` (the tool carries 64 MiB per call):
``.carry1/part``, ``.carry2/part``, ... plus ``.carry1/SHA256`` of the whole archive.

To make it small: onnxruntime-gpu's CUDA provider carries kernels for six GPU generations
(sm_75 ... sm_120, 208 MiB of its 284); the payloads of every cubin that is not for the
H100/H200's sm_90 are zeroed (headers kept, so the fat binary stays well formed and the CUDA
driver still picks the sm_90 one), and zeros compress to nothing. The python backend stubs for
other Pythons than 3.12 are left out.

    python scripts/gpu/pack.py --wheels /tmp/wheels --out .        # writes .carry1/ .carry2/ ...

The wheels (Python 3.12, versions as .ci/constraints.txt pins them; add onnxruntime-gpu for
the ONNX Runtime measurements; the pure-Python packages come from this environment):

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux1_x86_64 -d /tmp/wheels nvidia-pytriton==0.7.0 \
        tritonclient==2.73.0 brotli==1.2.1 gevent==26.9.0 geventhttpclient==2.6.1 \
        greenlet==3.3.2 python-rapidjson==1.25 zope.event==6.2 zope.interface==8.7
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import shutil
import struct
import tarfile
import tempfile
import zipfile
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KEEP_ARCH = 90  # sm_90: H100, H200
PURE_PYTHON = ("sam2", "hydra", "omegaconf", "antlr4", "iopath")


def zero_foreign_cubins(library: Path, keep_arch: int = KEEP_ARCH) -> tuple[int, int]:
    """Zero the payloads of ``library``'s fat-binary entries for other GPU architectures.

    Returns (bytes zeroed, bytes kept). The ``.nv_fatbin`` section is a list of fat binaries
    (header: magic, version, header size, size), each a list of entries (header: kind,
    version, header size, payload size, ..., architecture at byte 28).
    """
    data = bytearray(library.read_bytes())
    start, size = elf_section(data, ".nv_fatbin")
    pos, end, zeroed, kept = start, start + size, 0, 0
    while pos + 16 <= end:
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # alignment padding between fat binaries
            continue
        entry, fat_end = pos + header_size, pos + header_size + fat_size
        while entry < fat_end:
            _kind, _ever, entry_header = struct.unpack_from("<HHI", data, entry)
            (payload,) = struct.unpack_from("<Q", data, entry + 8)
            (arch,) = struct.unpack_from("<I", data, entry + 28)
            body = entry + entry_header
            if arch == keep_arch:
                kept += payload
            else:
                data[body : body + payload] = bytes(payload)
                zeroed += payload
            entry = body + payload
        pos = fat_end
    library.write_bytes(bytes(data))
    return zeroed, kept


def elf_section(data: bytes, name: str) -> tuple[int, int]:
    """(file offset, size) of the section ``name`` of a little-endian ELF64 file."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]
    for sh_name, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", names_offset + sh_name)
        if data[names_offset + sh_name : end].decode() == name:
            return offset, size
    raise ValueError(f"no section {name}")


def unpack_wheel(wheel: Path, site: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)


def build_site(wheels: Path, site: Path) -> None:
    for wheel in sorted(wheels.glob("*.whl")):
        unpack_wheel(wheel, site)
        print(f"unpacked {wheel.name}")
    cuda = site / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so"
    if cuda.is_file():
        zeroed, kept = zero_foreign_cubins(cuda)
        print(f"{cuda.name}: zeroed {zeroed >> 20} MiB of other GPUs' kernels, kept {kept >> 20}")
    stubs = site / "pytriton" / "tritonserver" / "python_backend_stubs"
    for folder in stubs.glob("*"):
        if folder.name != "3.12":
            shutil.rmtree(folder)
    for name in PURE_PYTHON:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{name} is not installed here (pip install it first)")
        source = Path(next(iter(spec.submodule_search_locations)))
        shutil.copytree(source, site / name, ignore=shutil.ignore_patterns("__pycache__"))
        print(f"copied {name} from {source}")


def archive(folder: Path) -> bytes:
    """``folder`` as an xz-compressed tar, its contents under ``site/``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", preset=6) as tar:
        tar.add(folder, arcname="site")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--part-mib", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site, ort = Path(tmp) / "site", Path(tmp) / "ort"
        build_site(args.wheels, site)
        ort.mkdir()
        for item in site.glob("onnxruntime*"):
            shutil.move(str(item), ort / item.name)
        # The first call brings everything but onnxruntime (so the exports can start at
        # once) and the first bytes of onnxruntime; the next calls the rest of it.
        base, runtime = archive(site), archive(ort)
    for old in args.out.glob(".carry[0-9]*"):
        shutil.rmtree(old)
    part = args.part_mib << 20
    first = max(0, part - len(base))
    chunks = [runtime[:first]] + [runtime[i : i + part] for i in range(first, len(runtime), part)]
    for i, chunk in enumerate(chunks, 1):
        folder = args.out / f".carry{i}"
        folder.mkdir(parents=True)
        (folder / "ort.part").write_bytes(chunk)
    (args.out / ".carry1" / "base.tar.xz").write_bytes(base)
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        for name, data in (("base.tar.xz", base), ("ort.tar.xz", runtime))
    )
    (args.out / ".carry1" / "SHA256SUMS").write_text(sums)
    print(
        f"base {len(base) >> 20} MiB, onnxruntime {len(runtime) >> 20} MiB in {len(chunks)} calls"
    )


if __name__ == "__main__":
    main()
