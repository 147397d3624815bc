"""The wire protocol: request parsing, routing text, the ``router`` override field and a
decision's wire forms (:class:`Routed`: the ``x-router-*`` headers and the ``/v1/route`` object).

Requests stay plain JSON objects so that every field the client sends reaches the upstream
unchanged; only ``model`` is replaced and ``router`` removed. A malformed field is refused with
:class:`~prefill_router.errors.ApiError` (400, naming the field).

The override field, one extra object in a chat-completions or route request::

    {"model": "router", "messages": [...],
     "router": {"policy": "tolerance", "knob": 0.05,     # or lambda / budget (μ)
                "budget_usd": 0.002,                      # a budget: μ solved on calibration rows
                "within": "1pt:gpt-4o", "delta": 0.05,    # a quality floor, certified on them
                "min_accuracy": 0.85,                     # (or an absolute one)
                "allowed": ["small", "large"],            # candidate targets of this request
                "max_cost_usd": 0.001,                    # hard cap on the estimated cost
                "session": false}}                        # opt out of session affinity
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefill_router.errors import ApiError, ConfigError
from prefill_router.policy import POLICIES, Decision, check_knob
from prefill_router.policy.floor import QualityFloor
from prefill_router.serve.config import OVERRIDE_FIELDS, parse_floor

_OVERRIDE_KEYS = OVERRIDE_FIELDS
MAX_NAME_CHARS = 256  # a ``model`` or ``router.allowed`` name longer than this is refused unread
MAX_ALLOWED = 256  # names in ``router.allowed``
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# How a lone surrogate reaches json.loads: as an escape, or as raw bytes it decodes with surrogatepass
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_ASCII = str.maketrans(
    {"μ": "mu", "λ": "lambda", "τ": "tau", "δ": "delta", "−": "-", "·": "*", "ĉ": "c_norm", "…": "..."}
)


@dataclass(frozen=True)
class Overrides:
    """Per-request routing options from the ``router`` field (None: the profile's)."""

    policy: str | None = None
    knob: float | None = None
    budget_usd: float | None = None
    floor: QualityFloor | None = None  # a quality floor of this request
    delta: float | None = None  # ``delta`` alone: the profile's floor at this risk
    allowed: tuple[str, ...] | None = None
    max_cost_usd: float | None = None
    session: bool = True  # False: neither reuse nor record this session's target


def parse_overrides(raw: Any) -> Overrides:
    """Validate the ``router`` field.

    Raises:
        ApiError: 400 naming the bad sub-field.
    """
    if raw is None:
        return Overrides()
    if not isinstance(raw, Mapping):
        raise _bad("'router' must be an object", "router")
    unknown = sorted(set(raw) - set(_OVERRIDE_KEYS))
    if unknown:
        raise _bad(
            f"unknown field router.{unknown[0]}; expected one of {', '.join(_OVERRIDE_KEYS)}", "router"
        )
    policy = raw.get("policy")
    if policy is not None and policy not in POLICIES:
        raise _bad(f"router.policy must be one of {', '.join(POLICIES)}; got {policy!r}", "router.policy")
    knob = _number(raw, "knob", infinite=True)  # μ = inf: always the cheapest
    if knob is not None and policy is not None:
        try:
            check_knob(policy, knob)
        except ConfigError as exc:
            raise _bad(f"router.knob: {exc}", "router.knob") from exc
    allowed = raw.get("allowed")
    if allowed is not None and (
        not isinstance(allowed, list)
        or not 0 < len(allowed) <= MAX_ALLOWED
        or not all(isinstance(a, str) and len(a) <= MAX_NAME_CHARS for a in allowed)
    ):
        raise _bad(
            f"router.allowed must be a list of 1 to {MAX_ALLOWED} target names (each at most "
            f"{MAX_NAME_CHARS} characters)",
            "router.allowed",
        )
    session = raw.get("session", True)
    if not isinstance(session, bool):
        raise _bad("router.session must be true or false", "router.session")
    floor, delta = _floor(raw)
    return Overrides(
        policy=policy, knob=knob, budget_usd=_number(raw, "budget_usd"), floor=floor, delta=delta,
        allowed=None if allowed is None else tuple(allowed), max_cost_usd=_number(raw, "max_cost_usd"),
        session=session,
    )  # fmt: skip


def _floor(raw: Mapping[str, Any]) -> tuple[QualityFloor | None, float | None]:
    """(the request's floor, or None; a lone ``delta`` for the profile's floor)."""
    within, min_accuracy, delta = raw.get("within"), raw.get("min_accuracy"), raw.get("delta")
    param = "router.within" if within is not None else "router.min_accuracy"
    if within is None and min_accuracy is None:
        if delta is None:
            return None, None
        param = "router.delta"
        within = "1pt"  # only to check the delta; the profile's floor is used
    try:
        floor = parse_floor(within, min_accuracy, delta)
    except ConfigError as exc:
        raise _bad(f"{param}: {exc}", param) from exc
    if param == "router.delta":
        return None, floor.delta
    return floor, None


def _number(raw: Mapping[str, Any], key: str, *, infinite: bool = False) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer beyond float range (JSON allows any number of digits)
        number = math.nan
    if math.isnan(number) or number < 0 or (math.isinf(number) and not infinite):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        kind = "a number >= 0" if infinite else "a finite number >= 0"
        raise _bad(f"router.{key} must be {kind}; got {shown}", f"router.{key}")
    return number


def check_model(model: Any) -> str:
    """The request's ``model`` if it can name a model at all; 400 before any look-up otherwise.

    Raises:
        ApiError: 400 for a missing, empty, non-string or over-long (> 256 characters) model.
    """
    if not isinstance(model, str) or not model:
        raise _bad("'model' must be 'router', a profile or a target name", "model")
    if len(model) > MAX_NAME_CHARS:
        raise _bad(f"'model' has {len(model)} characters; model names have at most {MAX_NAME_CHARS}", "model")
    return model


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_unicode(raw: bytes, body: Any) -> None:
    """Refuse a body whose strings hold a lone UTF-16 surrogate (e.g. ``"\\ud800"``, valid JSON).

    Such a string cannot be encoded as UTF-8: the tokenizer, the cost estimate and the upstream
    call would all fail on it. It gets there as a ``\\uD800``-``\\uDFFF`` escape, or as bytes
    ``json.loads`` decodes with ``surrogatepass`` (CESU-8, UTF-16); only such bodies are walked
    (iteratively, so any nesting depth is fine).

    Raises:
        ApiError: 400 naming the first such string by its path in the body.
    """
    if not _SURROGATE_BYTES.search(raw) and _is_utf8(raw):
        return
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            found = _LONE_SURROGATE.search(value)
            if found is not None:
                raise _bad(
                    f"{path or 'the body'} holds a lone UTF-16 surrogate (\\u{ord(found.group()):04x}) at "
                    f"character {found.start()}: it is not valid Unicode text; send real characters "
                    "(a surrogate pair encodes one character beyond U+FFFF)",
                    path or None,
                )
        elif isinstance(value, Mapping):
            for key, item in value.items():
                stack.append((f"{path}.{key}" if path else str(key), item))
                stack.append((f"{path} (a key)" if path else "a key", key))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one chat message: a string, or the text parts of a content list."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def check_messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The ``messages`` list; raises ApiError 400 when it is missing, empty or malformed."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of chat messages", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a 'role'", f"messages[{i}]")
    return messages


def routing_text(messages: list[Mapping[str, Any]], mode: str) -> str:
    """The text a request is routed on: the last or first user message, or the whole conversation.

    Raises:
        ApiError: 400 when that text is empty (no user text to route on).

    Example:
        >>> turns = [{"role": "user", "content": "hi"}, {"role": "user", "content": "sum 2+2"}]
        >>> routing_text(turns, "last_user")
        'sum 2+2'
    """
    if mode == "conversation":
        text = "\n".join(f"{m['role']}: {message_text(m)}" for m in messages if message_text(m).strip())
    else:
        users = [message_text(m) for m in messages if m.get("role") == "user"]
        users = [u for u in users if u.strip()]
        text = (users[0] if mode == "first_user" else users[-1]) if users else ""
    if not text.strip():
        raise _bad("the messages hold no user text to route on", "messages")
    return text


@dataclass(frozen=True)
class Routed:
    """One routing outcome: the decision, where it came from and whether the cache answered."""

    decision: Decision
    source: str  # policy / session / pinned / fallback
    cached: bool = False

    def headers(self) -> dict[str, str]:
        """The x-router-* decision headers (printable ASCII only)."""
        d = self.decision
        out = {"x-router-reason": header_safe(d.reason.translate(_ASCII))}
        if d.probabilities:
            out["x-router-probabilities"] = ",".join(f"{t}={p:.3f}" for t, p in d.probabilities.items())
        if d.target in d.costs_usd:
            out["x-router-estimated-cost"] = f"{d.costs_usd[d.target]:.6g}"
        out["x-router-cache"] = "hit" if self.cached else "miss"
        return out

    def to_json(self) -> dict[str, Any]:
        """The decision with its source, for /v1/route."""
        return {
            "object": "router.decision",
            **self.decision.to_json(),
            "source": self.source,
            "cached": self.cached,
        }


def header_safe(text: str) -> str:
    """``text`` as a header value: printable ASCII, anything else (CR, LF, é ...) as ``?``."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)
