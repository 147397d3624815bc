"""The wire protocol: the proxy's request and response bodies as pydantic models, and a decision's
wire forms (:class:`Routed`: the ``x-router-*`` headers and the ``/v1/route`` object).

Requests (:class:`ChatCompletionRequest`, :class:`DecisionRequest`) type the fields the proxy reads
and let every other field through: the chat body is forwarded as it was received (only ``model``
replaced, ``router`` removed), never re-serialized from its model. Each field's type carries the
words of its refusal, so a malformed field is refused as :class:`~prefill_router.errors.ApiError`
(400, naming the field), never with pydantic's own message.

The ``router`` extension field (:class:`RouterOptions`), one extra object in a chat-completions or
route request::

    {"model": "router", "messages": [...],
     "router": {"policy": "tolerance", "knob": 0.05,     # or lambda / budget (μ)
                "budget_usd": 0.002,                      # a budget: μ solved on calibration rows
                "within": "1pt:gpt-4o", "delta": 0.05,    # a quality floor, certified on them
                "min_accuracy": 0.85,                     # (or an absolute one)
                "allowed": ["small", "large"],            # candidate targets of this request
                "max_cost_usd": 0.001,                    # hard cap on the estimated cost
                "session": false}}                        # opt out of session affinity

Responses: :class:`RouteDecision` (:class:`RouteDecisionList` for ``prompts``) and the OpenAI
error envelope :class:`ErrorResponse`. :func:`openapi_schemas` gives the request bodies to
``/openapi.json`` (the handlers read the raw body themselves, for its size limit).

Modules: ``options`` (the ``router`` field), ``requests`` (the chat and route requests, the checks
the handlers run first, the text routed on), ``responses`` (decisions, errors, schemas) and
``_refusals`` (a pydantic error carrying the refusal's own words).
"""

from __future__ import annotations

from prefill_router.serve.protocol.options import (
    MAX_ALLOWED,
    MAX_NAME_CHARS,
    Overrides,
    RouterOptions,
    parse_overrides,
)
from prefill_router.serve.protocol.requests import (
    ChatCompletionRequest,
    ChatMessage,
    DecisionRequest,
    check_messages,
    check_model,
    check_unicode,
    message_text,
    routing_text,
    user_text,
)
from prefill_router.serve.protocol.responses import (
    ErrorDetail,
    ErrorResponse,
    Routed,
    RouteDecision,
    RouteDecisionList,
    openapi_schemas,
)

__all__ = [
    "MAX_ALLOWED",
    "MAX_NAME_CHARS",
    "ChatCompletionRequest",
    "ChatMessage",
    "DecisionRequest",
    "ErrorDetail",
    "ErrorResponse",
    "Overrides",
    "RouteDecision",
    "RouteDecisionList",
    "Routed",
    "RouterOptions",
    "check_messages",
    "check_model",
    "check_unicode",
    "message_text",
    "openapi_schemas",
    "parse_overrides",
    "routing_text",
    "user_text",
]
