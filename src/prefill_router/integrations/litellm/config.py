# ruff: noqa: TID253  (the LiteLLM integration owns the litellm import)
"""Setting the routing step up: :func:`install` into a ``litellm.Router``, or :func:`load_config`
from a LiteLLM config.yaml with a ``prefill_router`` section; checks every name on the way in."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from litellm.router import Router as LiteLLMRouter

from prefill_router.errors import ConfigError
from prefill_router.integrations.litellm.step import DEFAULT_MODEL_NAME, PrefillRouting
from prefill_router.policy import Budget, QualityFloor, Router, RouteRequest
from prefill_router.policy.floor import DEFAULT_DELTA

__all__ = ["install", "load_config", "load_router", "model_groups"]

#: LiteLLM's limit on a tier name, and its built-in tiers (a tier set of only these is not custom).
_TIER_NAME_CHARS = 64
_BUILT_IN_TIERS = frozenset({"NON_REASONING", "SIMPLE", "MEDIUM", "COMPLEX", "REASONING"})
#: The sections of config.yaml this loader reads, and the keys of its ``prefill_router`` section.
SECTIONS = ("model_list", "router_settings", "prefill_router")
KEYS = (
    "artifact", "model_name", "targets", "floor", "policy", "knob", "fallback_target", "timeout_s",
    "cache_dir", "allow_local_encoder",
)  # fmt: skip
_FLOOR_KEYS = ("within", "min_accuracy", "delta")


def model_groups(
    targets: Sequence[str], groups: Iterable[str], mapping: Mapping[str, str] | None
) -> dict[str, str]:
    """Each router target's LiteLLM model group: ``mapping``'s, else the group of the same name.

    Raises:
        ConfigError: a mapped name that is not a target (with a did-you-mean); targets whose model
            group LiteLLM does not have (all of them named, in one line); target names LiteLLM
            cannot use as tiers.
    """
    mapping = dict(mapping or {})
    for name in mapping:
        if name not in targets:
            close = difflib.get_close_matches(name, targets, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"targets maps {name!r}, which is not a target of the router.{hint} "
                f"Its targets: {', '.join(targets)}"
            )
    chosen = {t: mapping.get(t, t) for t in targets}
    known = set(groups)
    missing = [t if chosen[t] == t else f"{t} (as {chosen[t]})" for t in targets if chosen[t] not in known]
    if missing:
        raise ConfigError(
            f"router targets that are not LiteLLM model groups: {', '.join(missing)}; LiteLLM's model "
            f"groups: {', '.join(sorted(known)) or 'none'}. Add them to model_list, or map each target "
            "to a model group with targets: {TARGET: MODEL_GROUP}"
        )
    _check_tier_names(targets)
    return chosen


def _check_tier_names(targets: Sequence[str]) -> None:
    """Target names become the complexity router's tiers: at most 64 characters, distinct without
    regard to case, not all of them built-in tier names (LiteLLM's limits)."""
    long = [t for t in targets if len(t) > _TIER_NAME_CHARS]
    folded = [t.casefold() for t in targets]
    clash = sorted({t for t in targets if folded.count(t.casefold()) > 1})
    if long or clash or all(t.upper() in _BUILT_IN_TIERS for t in targets):
        problem = (
            f"longer than {_TIER_NAME_CHARS} characters: {', '.join(long)}" if long else
            f"equal but for case: {', '.join(clash)}" if clash else
            f"all built-in complexity tiers: {', '.join(targets)}"
        )  # fmt: skip
        raise ConfigError(
            f"LiteLLM cannot route to these router targets as tiers, their names are {problem}; "
            "rename the targets (prefill-router fit on a dataset with other target names)"
        )


def load_router(
    artifact: str | Path, *, cache_dir: str | Path | None = None, allow_local_encoder: bool = False
) -> Router:
    """:meth:`Router.load` for an artifact named in a config.

    Raises:
        ConfigError: no artifact folder at ``artifact``. Router.load's errors otherwise.
    """
    path = Path(artifact)
    if not (path / "router.json").is_file():
        raise ConfigError(
            f"no router artifact at {str(path)!r} (a folder with router.json, as `prefill-router fit "
            "DATA -o FOLDER` writes); fix the artifact path"
        )
    return Router.load(path, cache_dir=cache_dir, allow_local_encoders=allow_local_encoder)


# ---------------------------------------------------------------------------------------------------
# entry points


def install(
    litellm_router: LiteLLMRouter,
    artifact: str | Path | Router,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    targets: Mapping[str, str] | None = None,
    floor: QualityFloor | None = None,
    budget: Budget | None = None,
    policy: str | None = None,
    knob: float | None = None,
    fallback_target: str | None = None,
    timeout_s: float | None = None,
    cache_dir: str | Path | None = None,
    allow_local_encoder: bool = False,
) -> PrefillRouting:
    """Make ``model_name`` in ``litellm_router`` route with prefill-router; the router is loaded,
    its floor certified (or budget solved) and its encoder warmed up once, here.

    Args:
        litellm_router: a ``litellm.Router`` with a model group for every router target.
        artifact: the router artifact folder, or a loaded :class:`Router`.
        model_name: the model name callers ask for; must not be a model group already.
        targets: router target -> LiteLLM model group, for targets whose group has another name.
        floor, budget, policy, knob: as in :meth:`Router.route` (none: the router's default floor).
        fallback_target: where requests go when scoring fails, times out or finds no user text
            (default: the best single target, the default floor's reference).
        timeout_s: the scoring deadline (default: LiteLLM's, 3 s for a classifier plugin).
        cache_dir, allow_local_encoder: as in :meth:`Router.load`.

    Raises:
        ConfigError: a missing artifact, targets that are not model groups, ``model_name`` taken,
            a bad fallback target, a floor that cannot be certified, a bad policy or knob.

    Example:
        >>> routing = install(litellm.Router(model_list=[...]), "router/")  # doctest: +SKIP
    """
    router = artifact if isinstance(artifact, Router) else load_router(
        artifact, cache_dir=cache_dir, allow_local_encoder=allow_local_encoder
    )  # fmt: skip
    groups = litellm_router.registry().names(kind="group_set")
    if model_name in groups:
        raise ConfigError(
            f"model_name {model_name!r} is already a LiteLLM model group; "
            "give prefill-router's model another name"
        )
    chosen = model_groups(router.targets, groups, targets)
    fallback = fallback_target or router.best_single
    if fallback not in router.targets:
        raise ConfigError(
            f"fallback_target must be one of the router's targets ({', '.join(router.targets)}); "
            f"got {fallback!r}"
            + ("" if fallback else " (the router records no best single target to default to)")
        )
    if timeout_s is not None and not timeout_s > 0:
        raise ConfigError(
            f"The 'timeout_s' option must be a number of seconds > 0; got {timeout_s!r} instead."
        )
    plan = router.plan(RouteRequest(policy, knob, budget, floor))
    router.predict_proba(["warm-up"])  # load the encoder now, not on the first request
    routing = PrefillRouting(
        litellm_router, router, plan, model_name=model_name, model_groups=chosen, fallback_target=fallback,
        timeout_s=timeout_s,
    )  # fmt: skip
    return routing.attach()


def load_config(path: str | Path) -> PrefillRouting:
    """A ``litellm.Router`` from a LiteLLM config.yaml, with prefill-router installed as its
    ``prefill_router`` section says (see the README); the router is ``.litellm_router``.

    The file holds ``model_list`` and ``router_settings`` as LiteLLM reads them, and
    ``prefill_router``: ``artifact`` (required; relative to the file's folder), ``model_name``,
    ``targets``, ``floor`` ({within: "1pt[:TARGET]"} or {min_accuracy: 0.85}, with ``delta``) or
    ``policy`` and ``knob``, ``fallback_target``, ``timeout_s``, ``cache_dir``, ``allow_local_encoder``.

    Raises:
        ConfigError: an unreadable file, an unknown section or key, a missing artifact, targets that
            are not model groups; each in one line that names the file.
    """
    path = Path(path)
    try:
        return _load_config(path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _load_config(path: Path) -> PrefillRouting:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the config: {exc}") from exc
    data = _mapping(data, "the config")
    _check_keys(data, SECTIONS, "a section")
    section = _mapping(data.get("prefill_router"), "prefill_router")
    _check_keys(section, KEYS, "prefill_router: a key")
    if "artifact" not in section:
        raise ConfigError("prefill_router: artifact (the router artifact folder) is required")
    if "floor" in section and ("policy" in section or "knob" in section):
        raise ConfigError("prefill_router: set either floor or policy/knob, not both")
    settings = _mapping(data.get("router_settings") or {}, "router_settings")
    try:
        litellm_router = LiteLLMRouter(model_list=data.get("model_list") or [], **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model_list / router_settings: {exc}") from exc
    try:
        return _install_section(litellm_router, path, section)
    except BaseException:
        litellm_router.retire()  # the router never served: release what it registered globally
        raise


def _install_section(litellm_router: LiteLLMRouter, path: Path, section: Mapping[str, Any]) -> PrefillRouting:
    """:func:`install` with the ``prefill_router`` section of the config at ``path``."""
    targets = section.get("targets")
    return install(
        litellm_router,
        _relative(path, section["artifact"]),
        model_name=str(section.get("model_name", DEFAULT_MODEL_NAME)),
        targets=None
        if targets is None
        else {str(k): str(v) for k, v in _mapping(targets, "targets").items()},
        floor=_floor(section["floor"]) if "floor" in section else None,
        policy=section.get("policy"),
        knob=section.get("knob"),
        fallback_target=section.get("fallback_target"),
        timeout_s=section.get("timeout_s"),
        cache_dir=_relative(path, section["cache_dir"]) if section.get("cache_dir") else None,
        allow_local_encoder=bool(section.get("allow_local_encoder", False)),
    )


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping; got {type(value).__name__}")
    return value


def _check_keys(data: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{what} {key!r} is not one this loader reads.{hint} Known: {', '.join(known)}")


def _relative(config: Path, value: object) -> Path:
    """``value`` as a path; a relative one is taken from the config file's folder."""
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else config.parent / path


def _floor(raw: object) -> QualityFloor:
    """A floor from ``{within: "1pt[:TARGET]"}`` or ``{min_accuracy: 0.85}``, with an optional ``delta``."""
    floor = _mapping(raw, "prefill_router: floor")
    _check_keys(floor, _FLOOR_KEYS, "prefill_router: floor: a key")
    delta = floor.get("delta", DEFAULT_DELTA)
    if ("within" in floor) == ("min_accuracy" in floor):
        raise ConfigError(
            "prefill_router: floor needs exactly one of within ('1pt[:TARGET]') or min_accuracy"
        )
    if "within" in floor:
        return QualityFloor.parse(str(floor["within"]), delta=delta)
    return QualityFloor(min_accuracy=floor["min_accuracy"], delta=delta)
