"""The router artifact on disk: ``router.json`` + ``router.safetensors`` in one folder.

No pickle anywhere: the JSON holds every setting and name, safetensors holds every array (and,
in its string metadata, the target names and encoder hash the arrays were saved with, so an edit
to one file without the other is caught). The folder is written atomically. Reading checks the
format and version, parses both files and checks that every array is finite; the router checks
the shapes against the JSON (:meth:`prefill_router.Router.load`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from prefill_router._files import atomic_dir, default_file_mode
from prefill_router.errors import DataError

FORMAT = "prefill-router"
#: Bumped on any change a reader of the previous version cannot handle. Version 2: a list of
#: ``encoders`` (version 1 had one ``encoder``), blocks name their encoder, targets list their blocks.
#: Version 3: labelled calibration rows (``calibration.labels``, -1 = missing) for quality floors.
#: Version 1 and 2 artifacts still load (without labels, a floor needs `prefill-router calibrate`).
FORMAT_VERSION = 3
JSON_NAME = "router.json"
TENSORS_NAME = "router.safetensors"


def write_artifact(path: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``meta`` and ``arrays`` as an artifact folder at ``path`` (replacing one there)."""
    from safetensors.numpy import save_file

    path = check_destination(path)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    stamp = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "targets": json.dumps([t["name"] for t in meta["targets"]]),
        "encoders_sha256": json.dumps([e["weights_sha256"] for e in meta["encoders"]]),
    }
    with atomic_dir(path) as tmp:
        (tmp / JSON_NAME).write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / TENSORS_NAME), stamp)
        for file in tmp.iterdir():  # safetensors creates its file 0600; readers may be other users
            os.chmod(file, default_file_mode())
    return path


def check_destination(path: str | Path) -> Path:
    """``path`` as a Path, if an artifact may be written there (nothing, an empty folder or an artifact).

    Raises:
        DataError: a file or a non-empty folder that is not an artifact (it is never overwritten).
    """
    path = Path(path)
    occupied = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if occupied and not (path / JSON_NAME).is_file():
        raise DataError(
            "exists and is not a router artifact; choose another path (nothing was overwritten)",
            source=str(path),
        )
    return path


def read_artifact(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check an artifact folder: (router.json as a dict, arrays by name).

    Raises:
        DataError: a missing or unreadable file, another format, a newer format version, arrays
            with NaN/inf, or JSON and arrays that disagree on targets or encoder hash.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            "no router artifact here (expected a folder with router.json and router.safetensors)",
            source=str(path),
        )
    meta = _read_meta(path / JSON_NAME)
    arrays, stamp = _read_tensors(path / TENSORS_NAME)
    names = [t.get("name") for t in meta["targets"]] if isinstance(meta.get("targets"), list) else None
    if stamp.get("targets") != json.dumps(names):
        raise DataError(
            f"the target names in {JSON_NAME} ({names}) differ from those the arrays were saved with "
            f"({stamp.get('targets')}); the artifact was edited or its files mixed",
            source=str(path),
        )
    stamp_key, hashes = _encoder_hashes(meta)
    if stamp.get(stamp_key) != hashes:
        raise DataError(
            f"the encoder hashes in {JSON_NAME} ({hashes}) differ from those the arrays were saved "
            f"with ({stamp.get(stamp_key)}); the artifact was edited or its files mixed",
            source=str(path),
        )
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise DataError(f"array {name!r} holds NaN or inf values", source=str(path / TENSORS_NAME))
    return meta, arrays


def _encoder_hashes(meta: dict[str, Any]) -> tuple[str, str | None]:
    """(the stamp's key, the encoder hashes router.json records, as the stamp writes them).

    Version 1 stamped the one encoder's hash as ``encoder_sha256``; version 2 stamps the JSON list
    of every encoder's hash as ``encoders_sha256``.
    """
    if meta["format_version"] < 2:
        encoder = meta.get("encoder")
        return "encoder_sha256", encoder.get("weights_sha256") if isinstance(encoder, dict) else None
    encoders = meta.get("encoders")
    if not isinstance(encoders, list) or not all(isinstance(e, dict) for e in encoders):
        return "encoders_sha256", None
    return "encoders_sha256", json.dumps([e.get("weights_sha256") for e in encoders])


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"missing {JSON_NAME}; is this a router artifact?", source=str(path.parent)) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"not valid JSON ({exc}); the file is truncated or corrupt", source=str(path)
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"not a prefill-router artifact (its 'format' is not {FORMAT!r})", source=str(path))
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise DataError(f"'format_version' must be an integer; got {version!r}", source=str(path))
    if version > FORMAT_VERSION:
        raise DataError(
            f"written by a newer prefill-router (format version {version}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade with pip install -U prefill-router",
            source=str(path),
        )
    return meta


def _read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise DataError(f"missing {TENSORS_NAME}; is this a router artifact?", source=str(path.parent))
    try:
        with safe_open(str(path), framework="np") as handle:
            stamp = dict(handle.metadata() or {})
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"unreadable ({exc}); the file is truncated or corrupt", source=str(path)) from exc
    return arrays, stamp
