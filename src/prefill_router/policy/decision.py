"""One routing decision for one prompt, with every probability and cost and a readable reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from prefill_router._json import finite_or_none
from prefill_router.errors import ConfigError, DataError, UnknownTargetError
from prefill_router.policy.budget import format_usd
from prefill_router.policy.choice import _check_costs, _check_matrix, _choose, candidate_mask, check_knob

# ---------------------------------------------------------------------------------------------------
# one request

#: The reason's symbols spelled out for HTTP headers, which carry printable ASCII only.
_ASCII = str.maketrans(
    {"μ": "mu", "λ": "lambda", "τ": "tau", "δ": "delta", "−": "-", "·": "*", "ĉ": "c_norm", "…": "..."}
)


def header_text(text: str) -> str:
    """``text`` as an HTTP header value: a reason's symbols spelled out (μ -> mu ...), anything else
    that is not printable ASCII (CR, LF, é ...) as ``?``.

    Example:
        >>> header_text("budget policy, μ=1e+02\r\n")
        'budget policy, mu=1e+02??'
    """
    return "".join(c if " " <= c <= "~" else "?" for c in text.translate(_ASCII))


@dataclass(frozen=True)
class Decision:
    """Where one request goes, and why."""

    target: str
    index: int  # column of target in the router's targets
    policy: str
    knob: float
    probabilities: dict[str, float]  # every target
    costs_usd: dict[str, float]  # every target
    candidates: tuple[str, ...]  # the targets the policy chose among
    reason: str  # one human-readable line
    certificate: dict[str, Any] | None = None  # the quality floor's certificate, when one was kept

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (an infinite knob becomes null)."""
        out: dict[str, Any] = finite_or_none(asdict(self))
        return out

    def header_fields(self) -> dict[str, str]:
        """``reason``, ``probabilities`` and ``estimated-cost`` as HTTP header values (what the proxy
        sends as ``x-router-*`` and the LiteLLM step as ``x-litellm-prefill-router-*``); a decision
        without probabilities or costs (pinned, fallback) leaves those out."""
        out = {"reason": header_text(self.reason)}
        if self.probabilities:
            out["probabilities"] = ",".join(f"{t}={p:.3f}" for t, p in self.probabilities.items())
        if self.target in self.costs_usd:
            out["estimated-cost"] = f"{self.costs_usd[self.target]:.6g}"
        return out


def decide(
    p: np.ndarray,
    c: np.ndarray,
    targets: Sequence[str],
    policy: str = "budget",
    knob: float = 0.0,
    *,
    allowed: Sequence[str] | None = None,
    max_cost: float | None = None,
) -> Decision:
    """Route one request: :func:`choose` on one row, by target name, with a one-line reason.

    Args:
        p: (M,) probabilities. c: (M,) costs in USD. targets: the M names in column order.
        policy, knob: as in :func:`choose`.
        allowed: names of the targets this request may use (None = all).
        max_cost: a USD cap; when no allowed target fits, the cheapest allowed one is used.

    Raises:
        UnknownTargetError: a name in ``allowed`` not in ``targets``.
        ConfigError: bad policy or knob, an empty ``allowed``, duplicate or miscounted ``targets``.

    Example:
        >>> d = decide(np.array([0.86, 0.81]), np.array([5e-4, 1e-4]), ["big", "small"], "tolerance", 0.05)
        >>> d.target
        'small'
    """
    names = list(targets)
    p, c = np.asarray(p, dtype=float), np.asarray(c, dtype=float)
    if p.ndim != 1 or c.ndim != 1:
        raise DataError(f"p and c must be (M,) arrays for one request; got shapes {p.shape} and {c.shape}")
    costs = _check_costs(c[None, :])  # (1, M)
    probs = _check_matrix(p[None, :], "probabilities", costs.shape)
    if len(names) != costs.shape[1] or len(set(names)) != len(names):
        raise ConfigError(
            f"The 'targets' parameter must hold {costs.shape[1]} distinct names; got {names!r} instead."
        )
    knob = check_knob(policy, knob)
    mask, fell_back = candidate_mask(costs, allowed_mask(allowed, names), max_cost)
    index = int(_choose(probs, costs, policy, knob, mask)[0])
    candidates = tuple(name for name, ok in zip(names, mask[0], strict=True) if ok)
    reason = _reason(probs[0], costs[0], names, policy, knob, mask[0], index)
    if fell_back[0]:
        assert max_cost is not None  # only max_cost makes a row fall back
        reason += (
            f"; no allowed target costs at most {format_usd(max_cost)}, so the cheapest allowed one was used"
        )
    return Decision(
        target=names[index],
        index=index,
        policy=policy,
        knob=knob,
        probabilities=dict(zip(names, map(float, probs[0]), strict=True)),
        costs_usd=dict(zip(names, map(float, costs[0]), strict=True)),
        candidates=candidates,
        reason=reason,
    )


def allowed_mask(allowed: Sequence[str] | None, names: list[str]) -> np.ndarray | None:
    """(M,) bool: which of ``names`` are in ``allowed`` (``None`` = all; an unknown name raises
    UnknownTargetError with the valid ones)."""
    if allowed is None:
        return None
    if isinstance(allowed, str):
        allowed = [allowed]
    for name in allowed:
        if name not in names:
            raise UnknownTargetError(name, names)
    return np.isin(np.array(names), np.array(list(allowed), dtype=str))


def _reason(
    p: np.ndarray, c: np.ndarray, names: list[str], policy: str, knob: float, mask: np.ndarray, index: int
) -> str:
    """The one-line why of a decision, e.g. "budget policy, μ=1.2e+04: maximises p − μ·c over ..."."""
    count = int(mask.sum())
    pool = f"{count} allowed target{'s' if count != 1 else ''}"
    best = int(np.argmax(np.where(mask, p, -np.inf)))
    picked = f"{names[index]} (p={p[index]:.2f}, {format_usd(float(c[index]))})"
    if policy == "tolerance":
        head = (
            f"tolerance policy, τ={knob:g}: cheapest of {pool} within {knob:g} of the best p ({p[best]:.2f})"
        )
    elif policy == "lambda":
        head = f"lambda policy, λ={knob:g}: maximises λ·p − (1 − λ)·ĉ over {pool}"
    else:
        head = f"budget policy, μ={knob:.2g}: maximises p − μ·c over {pool}"
    if p[index] >= p[best]:
        return f"{head}; picked {picked}, the most likely"
    runner = f"{names[best]} (p={p[best]:.2f}, {format_usd(float(c[best]))})"
    return f"{head}; picked {picked} over the most likely {runner}"
