"""The building blocks of the serve config: its names, the field types whose errors are worded
(``<path> must be ...; got ...``), and the checks shared by its sections.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from prefill_router.errors import ConfigError
from prefill_router.policy.floor import DEFAULT_DELTA, QualityFloor

RoutingTextMode = Literal["last_user", "first_user", "conversation"]
ROUTING_TEXTS: tuple[str, ...] = get_args(RoutingTextMode)
PolicyName = Literal["budget", "lambda", "tolerance"]  # prefill_router.policy.POLICIES (a test checks)
ROUTER_MODEL = "router"
#: The fields of a request's ``router`` object (see :mod:`prefill_router.serve.protocol`).
OVERRIDE_FIELDS = (
    "policy", "knob", "budget_usd", "min_accuracy", "within", "delta", "allowed", "max_cost_usd", "session",
)  # fmt: skip
#: The fields of a quality floor, in a profile, the top-level ``floor`` and a request's ``router``.
FLOOR_FIELDS = ("within", "min_accuracy", "delta")


# ------------------------------------------------------------------------- errors in words
WRONG = "serve_config"  # the pydantic error type of a worded config error


class Detail:
    """An error's words, held in its context as an object: pydantic-core turns strings into UTF-8,
    which a YAML string with a lone surrogate is not."""

    def __init__(self, text: str, *, whole: bool) -> None:
        self.text = text
        self.whole = whole  # the whole message, without the field's path


def wrong(detail: str, *, whole: bool = False) -> PydanticCustomError:
    """An error whose message is the field's path then ``detail`` (" must be ...", ": ..."); at the
    top of the document (or ``whole``), ``detail`` alone."""
    try:
        detail.encode()
        template = detail  # pydantic's own rendering, for developers
    except UnicodeEncodeError:
        template = "invalid serve config value"
    return PydanticCustomError(WRONG, template, {"detail": Detail(detail, whole=whole)})


def config_error(exc: ValidationError, where: str = "") -> ConfigError:
    """The first error of a validation as a ConfigError naming the field's path."""
    error = exc.errors()[0]
    path = ".".join(str(part) for part in (where, *error["loc"]) if part != "")
    if error["type"] != WRONG:  # a type without words of its own
        return ConfigError(f"{path or 'the serve config'}: {error['msg']}")
    detail: Detail = error.get("ctx", {})["detail"]
    if not path or detail.whole:
        return ConfigError(detail.text.removeprefix(": "))
    return ConfigError(f"{path}{detail.text}")


def expect(what: str | Callable[[Any], str]) -> WrapValidator:
    """Any error of the annotated type reads "<path> must be <what>; got <value>" (``what`` may be
    made from the value: then it is the whole detail)."""

    def wrap(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            detail = f" must be {what}; got {value!r}" if isinstance(what, str) else what(value)
            raise wrong(detail) from None

    return WrapValidator(wrap)


def not_null(detail: str) -> BeforeValidator:
    """An explicit null is an error (an absent field takes its default)."""

    def check(value: Any) -> Any:
        if value is None:
            raise wrong(detail)
        return value

    return BeforeValidator(check)


def empty_as_absent(value: Any) -> Any:
    """A section given as null or empty (``profiles:``, ``fallback: []``) is the default."""
    return value or None


def no_unknown_fields(data: Any, known: Sequence[str], words: str) -> None:
    """Raise the worded error ": unknown field 'x'<words>" for the first key of ``data`` not ``known``."""
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise wrong(f": unknown field {unknown[0]!r}{words}")


def validation_context(info: ValidationInfo) -> tuple[Sequence[str], Mapping[str, str]]:
    """(the router's targets, the environment) a document is validated against."""
    context = info.context or {}
    return context.get("targets", ()), context.get("environ", os.environ)


# ------------------------------------------------------------------------- field types
def _is_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError("not an http(s) URL")
    return url.rstrip("/")


def _is_printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("not printable")
    return text


def _are_override_fields(names: list[str]) -> list[str]:
    if not all(name in OVERRIDE_FIELDS for name in names):
        raise ValueError("not a router field")
    return names


Url = Annotated[
    str, Strict(), AfterValidator(_is_url), expect("an http(s) URL such as http://localhost:4000/v1")
]
ModelId = Annotated[
    str, Strict(), Field(min_length=1), AfterValidator(_is_printable), expect("a non-empty printable string")
]
EnvName = Annotated[str, Strict(), expect("an environment variable name")]
Count = Annotated[int, Strict(), Field(ge=0), expect("an integer >= 0")]
PositiveCount = Annotated[int, Strict(), Field(ge=1), expect("an integer >= 1")]
LogBytes = Annotated[int, Strict(), Field(ge=1000), expect("an integer >= 1000")]
Seconds = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False), expect("a positive number")]
SecondsOrZero = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False), expect("a number >= 0")]
Flag = Annotated[bool, Strict(), expect("true or false")]
Policy = Annotated[PolicyName, expect(lambda v: f" must be one of budget, lambda, tolerance; got {v!r}")]
Knob = Annotated[float, Strict(), expect("a number")]
RoutingText = Annotated[
    RoutingTextMode,
    expect(lambda v: f" must be one of {', '.join(ROUTING_TEXTS)}; got {v!r}"),
]
OverrideNames = Annotated[
    list[str],
    AfterValidator(_are_override_fields),
    expect(lambda v: f" must be a list of router fields among {', '.join(OVERRIDE_FIELDS)}; got {v!r}"),
]


# ------------------------------------------------------------------------- shared checks
def check_knob_words(policy: str, knob: float) -> float:
    """``knob`` for ``policy``; raises the worded error ": <why>" otherwise."""
    from prefill_router.policy import check_knob

    try:
        return check_knob(policy, knob)
    except ConfigError as exc:
        raise wrong(f": {exc}") from exc


def parse_floor(within: Any, min_accuracy: Any, delta: Any) -> QualityFloor:
    """One floor from its fields as they come from YAML or JSON.

    Raises:
        ConfigError: both or neither of within / min_accuracy, or a bad value.
    """
    if (within is None) == (min_accuracy is None):
        raise ConfigError("a quality floor needs exactly one of within ('1pt[:TARGET]') or min_accuracy")
    risk = DEFAULT_DELTA if delta is None else delta
    if not is_float(risk):
        raise ConfigError(f"delta must be a number in (0, 0.5]; got {delta!r}")
    if within is not None:
        if not isinstance(within, str):
            raise ConfigError(f"within must read '1pt[:TARGET]' or '99%[:TARGET]'; got {within!r}")
        return QualityFloor.parse(within, delta=float(risk))
    if not is_float(min_accuracy):
        raise ConfigError(f"min_accuracy must be a number in (0, 1]; got {min_accuracy!r}")
    return QualityFloor(min_accuracy=float(min_accuracy), delta=float(risk))


def is_float(value: Any) -> bool:
    """A number (not a bool) that a float holds: JSON and YAML integers can have any number of digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def check_names(raw: Any, targets: Sequence[str]) -> None:
    """Raise the worded error unless ``raw`` is a list of the router's target names."""
    from prefill_router.errors import UnknownTargetError

    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise wrong(f" must be a list of target names; got {raw!r}")
    for name in raw:
        check_target_name(name, "")
        if name not in targets:
            raise wrong(f": {UnknownTargetError(name, targets)}")


def check_target_name(name: Any, where: str) -> None:
    """Raise for a name that could break a header or a log line (CR/LF, non-latin-1...): ConfigError
    naming ``where``, or (``where`` empty) the worded error of the field being validated."""
    from prefill_router.data.importers import target_name_problem

    problem = target_name_problem(name)
    if problem is not None:
        if not where:
            raise wrong(f": {problem}")
        raise ConfigError(f"{where}: {problem}")


_URL = TypeAdapter(Url)


def check_url(url: Any, where: str) -> str:
    """``url`` without its trailing slash; ConfigError naming ``where`` unless it is an http(s) URL."""
    try:
        return _URL.validate_python(url)
    except ValidationError as exc:
        raise config_error(exc, where) from None


# ------------------------------------------------------------------------- shared state (Redis)
def _is_redis_url(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        raise ValueError("not a Redis URL") from None
    db = parts.path.strip("/")
    ok = bool(parts.path) if parts.scheme == "unix" else (
        parts.scheme in ("redis", "rediss") and bool(parts.hostname) and (db == "" or db.isdigit())
    )  # fmt: skip
    if not ok or not url.isprintable():
        raise ValueError("not a Redis URL")
    return url


def redact_password(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    head, at, host = url.rpartition("@")
    scheme, sep, user = head.partition("://")
    if not at or not sep or ":" not in user:
        return url
    return f"{scheme}://{user.split(':')[0]}:***@{host}"


RedisUrl = Annotated[
    str,
    Strict(),
    AfterValidator(_is_redis_url),
    expect(
        lambda url: (
            " must be a Redis URL such as redis://127.0.0.1:6379/0 (or rediss://, unix://); got "
            f"{redact_password(url) if isinstance(url, str) else url!r}"
        )
    ),
]
_REDIS_URL = TypeAdapter(RedisUrl | None)


def check_state_url(url: Any, where: str = "state") -> str | None:
    """``url`` when it is a Redis URL (``redis://HOST:PORT/DB``, ``rediss://``, ``unix://PATH``);
    None for None.

    Raises:
        ConfigError: anything else, naming ``where`` (``state`` or ``--state``), its password hidden.
    """
    try:
        return _REDIS_URL.validate_python(url)
    except ValidationError as exc:
        raise config_error(exc, where) from None
