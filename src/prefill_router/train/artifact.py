"""The router artifact on disk: ``router.json`` + ``router.safetensors`` in one folder.

No pickle anywhere: the JSON holds every setting and name, safetensors holds every array (and,
in its string metadata, the target names and encoder hash the arrays were saved with, so an edit
to one file without the other is caught). The folder is written atomically. Reading checks the
format and version, parses both files and checks that every array is finite.

The codec between a router and those files lives here too: :func:`router_document` turns a
router's parts into (router.json, arrays) and :func:`router_parts` turns them back, checking every
array's shape against the JSON, so the router itself never reads or writes a file format.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefill_router._files import atomic_dir, default_file_mode
from prefill_router.data.dataset import TargetInfo, target_name_problem
from prefill_router.encode.identity import EncoderIdentity
from prefill_router.errors import DataError
from prefill_router.train.net import TrunkEnsemble
from prefill_router.train.transform import FeatureBlock, FeatureTransform

if TYPE_CHECKING:
    from prefill_router.train.router import RouterModel

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


# ---------------------------------------------------------------------------------------------------
# the codec between a router and the two files

#: Missing calibration labels are stored as this value (safetensors arrays must be finite).
MISSING_LABEL = -1.0

#: router.json keys that describe the router's structure; every other key is carried as ``info``.
_STRUCTURE_KEYS = frozenset(
    {"format", "format_version", "encoder", "encoders", "targets", "blocks", "net", "calibration"}
)


@dataclass(frozen=True, eq=False)
class CalibrationRows:
    """Held-out labelled rows kept in the artifact: budgets are solved and floors certified on them."""

    x: np.ndarray  # (n, d_in) the net's input
    tokens: np.ndarray  # (n,) input tokens of each prompt (its cost on each target)
    labels: np.ndarray | None = None  # (n, M) labels, NaN where missing; None before floors existed
    independent: bool = False  # never trained, early-stopped or temperature-scaled on
    source: str = "fit"  # fit, or the labelled data `prefill-router calibrate` read

    def __post_init__(self) -> None:
        if self.labels is not None and (self.labels.shape[0] != len(self.x) or self.labels.ndim != 2):
            raise DataError(f"calibration labels must be ({len(self.x)}, M); got {self.labels.shape}")
        if self.labels is not None and ((self.labels < 0) | (self.labels > 1)).any():
            raise DataError("calibration labels must lie in [0, 1] (NaN = missing)")

    def __len__(self) -> int:
        return len(self.x)

    def to_json(self) -> dict[str, Any]:
        """The ``calibration`` object of router.json."""
        return {
            "rows": len(self.x), "labels": self.labels is not None, "independent": self.independent,
            "source": self.source,
        }  # fmt: skip


def router_document(router: RouterModel) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(router.json without the format fields, the arrays by name) of ``router``."""
    ensemble, transform = router.ensemble, router.transform
    meta = {
        "encoders": [identity.to_json() for identity in router.encoders],
        "targets": [
            {**t.to_json(), "output_tokens": float(router.output_tokens[j]),
             "blocks": list(transform.target_blocks[t.name])}
            for j, t in enumerate(router.target_info)
        ],
        "blocks": [
            {"encoder": b.encoder, "pooling": b.pooling, "layers": list(b.layers),
             "n_in": int(b.mean.shape[0]), "n_out": b.n_out}
            for b in transform.blocks
        ],
        "net": {
            "d_in": int(ensemble.w1.shape[1]),
            "hidden": [int(ensemble.w1.shape[2]), int(ensemble.w2.shape[2])],
            "n_targets": ensemble.n_targets, "members": ensemble.n_members,
        },
        **({"calibration": router.calibration.to_json()} if router.calibration is not None else {}),
        **router.info,
    }  # fmt: skip
    arrays: dict[str, np.ndarray] = {"calibration.temperature": router.temperatures}
    for i, block in enumerate(transform.blocks):
        arrays |= {
            f"block.{i}.mean": block.mean,
            f"block.{i}.scale": block.scale,
            f"block.{i}.components": block.components,
        }
    arrays |= {f"net.{name}": getattr(ensemble, name) for name in TrunkEnsemble.ARRAYS}
    rows = router.calibration
    if rows is not None:
        arrays |= {
            "calibration.x": rows.x.astype(np.float32),
            "calibration.input_tokens": rows.tokens.astype(np.float32),  # exact below 2**24
        }
        if rows.labels is not None:
            arrays["calibration.labels"] = np.nan_to_num(rows.labels, nan=MISSING_LABEL).astype(np.float32)
    return meta, arrays


def router_parts(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The keyword arguments of :class:`~prefill_router.train.router.RouterModel` that an artifact's
    router.json and arrays describe, every array's shape checked against the JSON.

    Raises:
        DataError: a structure that does not add up (the message names what); KeyError, TypeError
            or ValueError from a malformed router.json (the caller names the file).
    """
    shapes = _ShapeCheck(arrays)
    # Format 1 had one encoder ("encoder") and one block per target ("block").
    encoders = [EncoderIdentity(**e) for e in (meta["encoders"] if "encoders" in meta else [meta["encoder"]])]
    blocks = [_block(i, spec, shapes, len(encoders)) for i, spec in enumerate(meta["blocks"])]
    targets = [_target_info(t) for t in meta["targets"]]
    names = [t.name for t in targets]
    for name in names:
        if problem := target_name_problem(name):
            raise DataError(f"router.json: {problem}")
    if len(set(names)) != len(names):
        raise DataError(f"router.json names a target twice: {names}")
    target_blocks = {
        t["name"]: tuple(int(b) for b in t["blocks"]) if "blocks" in t else (int(t["block"]),)
        for t in meta["targets"]
    }
    bad = [n for n, b in target_blocks.items() if not b or not all(0 <= i < len(blocks) for i in b)]
    if bad:
        raise DataError(f"router.json: target {bad[0]!r} points at a block that does not exist")
    net, m = meta["net"], len(targets)
    s, d_in, (h1, h2) = int(net["members"]), sum(b.n_out for b in blocks), (int(h) for h in net["hidden"])
    ensemble = TrunkEnsemble(
        w1=shapes.get("net.w1", (s, d_in, h1)), b1=shapes.get("net.b1", (s, h1)),
        w2=shapes.get("net.w2", (s, h1, h2)), b2=shapes.get("net.b2", (s, h2)),
        w3=shapes.get("net.w3", (s, h2, m)), b3=shapes.get("net.b3", (s, m)),
    )  # fmt: skip
    temperatures = shapes.get("calibration.temperature", (m,))
    if (temperatures <= 0).any():
        raise DataError("router.safetensors: calibration temperatures must be > 0")
    calibration = _calibration_rows(meta.get("calibration"), shapes, d_in, m)
    shapes.no_extras()
    return {
        "encoder": encoders,
        "transform": FeatureTransform(tuple(blocks), target_blocks),
        "ensemble": ensemble,
        "temperatures": temperatures,
        "targets": targets,
        "output_tokens": np.array([float(t["output_tokens"]) for t in meta["targets"]]),
        "info": {k: v for k, v in meta.items() if k not in _STRUCTURE_KEYS},
        "calibration": calibration,
    }


class _ShapeCheck:
    """Hands out arrays by name after checking their shape; remembers which were used."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays, self.used = arrays, set[str]()

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.arrays:
            raise DataError(f"router.safetensors lacks the array {name!r}")
        array = self.arrays[name]
        if array.shape != shape:
            raise DataError(
                f"router.safetensors: array {name!r} has shape {array.shape}; router.json implies {shape}"
            )
        self.used.add(name)
        return array.astype(np.float32, copy=False)

    def no_extras(self) -> None:
        extra = sorted(set(self.arrays) - self.used)
        if extra:
            raise DataError(f"router.safetensors holds arrays router.json does not describe: {extra}")


def _block(index: int, spec: dict[str, Any], shapes: _ShapeCheck, n_encoders: int) -> FeatureBlock:
    n_in, n_out, encoder = int(spec["n_in"]), int(spec["n_out"]), int(spec.get("encoder", 0))
    if not 0 <= encoder < n_encoders:
        raise DataError(f"router.json: block {index} reads encoder {encoder}; there are {n_encoders}")
    return FeatureBlock(
        pooling=str(spec["pooling"]),
        layers=tuple(int(layer) for layer in spec["layers"]),
        mean=shapes.get(f"block.{index}.mean", (n_in,)),
        scale=shapes.get(f"block.{index}.scale", (n_in,)),
        components=shapes.get(f"block.{index}.components", (n_out, n_in)),
        encoder=encoder,
    )


def _calibration_rows(
    spec: dict[str, Any] | None, shapes: _ShapeCheck, d_in: int, m: int
) -> CalibrationRows | None:
    """The calibration rows router.json describes (format 2 routers hold no labels)."""
    if spec is None:
        return None
    rows = int(spec["rows"])
    labels = None
    if spec.get("labels"):
        labels = shapes.get("calibration.labels", (rows, m)).astype(np.float64)
        if (((labels < 0) & (labels != MISSING_LABEL)) | (labels > 1)).any():
            raise DataError("router.safetensors: calibration labels must lie in [0, 1] (or -1 = missing)")
        labels[labels == MISSING_LABEL] = np.nan
    return CalibrationRows(
        x=shapes.get("calibration.x", (rows, d_in)),
        tokens=shapes.get("calibration.input_tokens", (rows,)),
        labels=labels,
        independent=bool(spec.get("independent", False)),
        source=str(spec.get("source", "fit")),
    )


def _target_info(spec: dict[str, Any]) -> TargetInfo:
    return TargetInfo(
        name=str(spec["name"]),
        input_usd_per_mtok=spec.get("input_usd_per_mtok"),
        output_usd_per_mtok=spec.get("output_usd_per_mtok"),
        price_source=spec.get("price_source"),
        price_derived=bool(spec.get("price_derived", False)),
    )
