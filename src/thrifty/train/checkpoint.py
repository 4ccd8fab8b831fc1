"""Checkpoints that are complete or absent, and verified before they are loaded.

A checkpoint is a directory ``checkpoints/step_NNNNNNNN/`` holding ``shared.pt`` (state every
rank has in common, written by rank 0), ``rank<R>.pt`` (state of rank R only) and ``meta.json``
(the step, the world size, and the size and SHA-256 of every file). Files are written under a
temporary name, fsynced and renamed; the directory is assembled under a temporary name and
renamed into place only once every file and the manifest are on disk. A checkpoint whose files
are missing, truncated or fail their checksum is reported and never loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from thrifty.errors import ThriftyError
from thrifty.files import fsync_dir, write_atomic

FORMAT = 1
_PREFIX = "step_"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{_PREFIX}{step:08d}"


def partial_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f".{_PREFIX}{step:08d}.partial"


def save_file(directory: Path, name: str, state: dict, compress: bool = True) -> dict:
    """Serialise ``state`` as ``name`` in ``directory``; returns its manifest entry. With
    ``compress`` the ``torch.save`` bytes are stored in the thrifty container (``name.thz``),
    whose float transform shrinks weights and optimizer moments losslessly."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    entry = {"file": name, "raw_bytes": len(data)}
    if compress:
        from thrifty.compress import SUFFIX, compress_bytes

        data = compress_bytes(data)
        entry["file"] = name + SUFFIX
    write_atomic(directory / entry["file"], data)
    return {**entry, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def publish(partial: Path, final: Path, step: int, world_size: int, files: dict[str, dict]) -> None:
    """Write the manifest and rename the assembled directory into place (rank 0 only)."""
    meta = {"format": FORMAT, "step": step, "world_size": world_size, "files": files}
    write_atomic(partial / "meta.json", json.dumps(meta, indent=1).encode())
    os.replace(partial, final)
    fsync_dir(final.parent)


def read_meta(ckpt: Path) -> dict:
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ThriftyError(f"checkpoint {ckpt}: unsupported format {meta.get('format')!r}")
        return meta
    except FileNotFoundError:
        raise ThriftyError(f"checkpoint {ckpt}: no meta.json (incomplete checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise ThriftyError(f"checkpoint {ckpt}: meta.json is corrupt") from None


def load_file(ckpt: Path, name: str, map_location: str | torch.device = "cpu") -> dict:
    """Read one file of a checkpoint, check its size and SHA-256, then deserialise it."""
    entry = read_meta(ckpt)["files"].get(name)
    if entry is None:
        raise ThriftyError(f"checkpoint {ckpt}: {name} is not part of it")
    stored = entry.get("file", name)
    try:
        data = (ckpt / stored).read_bytes()
    except FileNotFoundError:
        raise ThriftyError(f"checkpoint {ckpt}: {stored} is missing") from None
    if len(data) != entry["bytes"]:
        raise ThriftyError(
            f"checkpoint {ckpt}: {stored} is truncated ({len(data)} of {entry['bytes']} bytes)"
            if len(data) < entry["bytes"]
            else f"checkpoint {ckpt}: {stored} has {len(data)} bytes, expected {entry['bytes']}"
        )
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ThriftyError(f"checkpoint {ckpt}: {stored} fails its SHA-256 checksum (corrupt)")
    if stored != name:
        from thrifty.compress import decompress_bytes

        try:
            data = decompress_bytes(data)
        except ThriftyError as e:
            raise ThriftyError(f"checkpoint {ckpt}: {e}") from None
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def verify(ckpt: Path) -> dict:
    """Check every file of ``ckpt`` against its manifest without deserialising; returns meta."""
    meta = read_meta(ckpt)
    for name, entry in meta["files"].items():
        name = entry.get("file", name)
        path = ckpt / name
        if not path.exists():
            raise ThriftyError(f"checkpoint {ckpt}: {name} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ThriftyError(f"checkpoint {ckpt}: {name} is truncated ({size} of {entry['bytes']} bytes)")
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise ThriftyError(f"checkpoint {ckpt}: {name} fails its SHA-256 checksum (corrupt)")
    return meta


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Renamed-into-place checkpoints of a run, newest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_valid(run_dir: Path, warn=None) -> Path | None:
    """The newest checkpoint that verifies; corrupt ones are reported (one line each) and skipped."""
    warn = warn or (lambda msg: print(f"thrifty: warning: {msg}", file=sys.stderr))
    for ckpt in complete_checkpoints(run_dir):
        try:
            verify(ckpt)
            return ckpt
        except ThriftyError as exc:
            warn(f"{exc}; skipping it")
    return None


def prune(run_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` complete checkpoints, and leftover partial ones."""
    for old in complete_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    root = Path(run_dir) / "checkpoints"
    for partial in root.glob(f".{_PREFIX}*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
