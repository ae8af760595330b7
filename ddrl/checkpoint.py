"""Checkpoints: safetensors arrays plus a JSON sidecar with a checksum, written atomically, never pickled.

Layout inside a run directory::

    checkpoints/ckpt-000010.safetensors   the training state (parameters, optimizer, normalizers)
    checkpoints/ckpt-000010.json          iteration, env steps, config fingerprint, sha256 of the arrays
    checkpoints/latest.json               names the newest checkpoint; written last

Each file is written under a temporary name and renamed, so a crash leaves either the old file or the new
one.  A checkpoint whose checksum does not match is reported and skipped in favour of an older one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

log = logging.getLogger(__name__)

State = dict[str, np.ndarray]


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write`` on a temporary path beside ``path``, flush it to disk, then rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save(directory: Path, iteration: int, state: State, meta: dict[str, Any], keep: int) -> Path:
    """Write the state after ``iteration`` iterations, point ``latest.json`` at it, prune old ones."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{iteration:06d}"
    arrays_path = directory / f"{name}.safetensors"
    arrays = {key: np.array(value, order="C") for key, value in state.items()}
    atomic_write(arrays_path, lambda path: save_file(arrays, str(path)))
    sidecar = {**meta, "iteration": iteration, "sha256": _sha256(arrays_path)}
    atomic_write(directory / f"{name}.json", lambda path: path.write_text(json.dumps(sidecar, indent=2)))
    atomic_write(directory / "latest.json", lambda path: path.write_text(json.dumps({"checkpoint": name})))
    for old in _sidecars_oldest_first(directory)[:-keep]:
        old.unlink()
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return arrays_path


def load_latest(directory: Path) -> tuple[State, dict[str, Any]] | None:
    """The newest checkpoint whose checksum verifies, with its sidecar; None if there is none."""
    for sidecar_path in reversed(_sidecars_oldest_first(directory)):
        arrays_path = sidecar_path.with_suffix(".safetensors")
        try:
            sidecar = json.loads(sidecar_path.read_text())
            if not arrays_path.exists() or _sha256(arrays_path) != sidecar["sha256"]:
                raise ValueError("checksum mismatch")
            return load_file(str(arrays_path)), sidecar
        except (ValueError, KeyError, OSError, SafetensorError) as error:  # SafetensorError: not safetensors at all
            log.warning("skipping damaged checkpoint %s: %s", arrays_path.name, error)
    return None


def _sidecars_oldest_first(directory: Path) -> list[Path]:
    return sorted(directory.glob("ckpt-*.json"), key=lambda path: int(path.stem.removeprefix("ckpt-")))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
