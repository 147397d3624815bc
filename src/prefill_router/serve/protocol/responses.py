"""What the proxy answers: a /v1/route decision (:class:`RouteDecision`, :class:`Routed` with the
``x-router-*`` headers), the OpenAI error envelope, and the request bodies' JSON schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)
from pydantic.json_schema import models_json_schema

from prefill_router.errors import ApiError
from prefill_router.policy import Decision
from prefill_router.serve.protocol.requests import ChatCompletionRequest, DecisionRequest


class RouteDecision(BaseModel):
    """One ``/v1/route`` decision: the target, every probability and cost, why, and where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="RouteDecision")

    object: Literal["router.decision"] = "router.decision"
    target: str = Field(description="The chosen target.")
    index: int = Field(description="Its column in the router's targets.")
    policy: str = Field(description="The policy that decided (pinned / session / fallback: no policy).")
    knob: float | None = Field(description="The policy's knob (null: infinite μ).")
    probabilities: dict[str, float] = Field(description="Each target's probability of a correct answer.")
    costs_usd: dict[str, float] = Field(description="Each target's estimated cost in USD.")
    candidates: list[str] = Field(description="The targets the policy chose among.")
    reason: str = Field(description="One human-readable line.")
    certificate: dict[str, Any] | None = Field(
        description="The quality floor's certificate, when one was kept."
    )
    source: Literal["policy", "session", "pinned", "fallback"]
    cached: bool = Field(description="Whether the scores came from the decision cache.")


class RouteDecisionList(BaseModel):
    """The ``/v1/route`` answer for ``prompts``: one decision per prompt, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="RouteDecisionList")

    object: Literal["list"] = "list"
    data: list[RouteDecision]


class ErrorDetail(BaseModel):
    """What went wrong: the message, the OpenAI error type, the offending field and a code."""

    model_config = ConfigDict(frozen=True)

    message: str
    type: str = Field(
        description="invalid_request_error, authentication_error, permission_error, server_error ..."
    )
    param: str | None = Field(description="The offending request field, e.g. 'router.knob'.")
    code: str | None = Field(description="A machine-readable code, e.g. 'model_not_found'.")


class ErrorResponse(BaseModel):
    """The OpenAI error envelope every refusal and failure is answered with."""

    model_config = ConfigDict(frozen=True)

    error: ErrorDetail

    @classmethod
    def of(cls, error: ApiError) -> ErrorResponse:
        """The envelope of ``error``."""
        return cls(
            error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code)
        )


def openapi_schemas() -> dict[str, Any]:
    """The request bodies' JSON schemas as OpenAPI components (``#/components/schemas/NAME``)."""
    _, schemas = models_json_schema(
        [(ChatCompletionRequest, "validation"), (DecisionRequest, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    definitions: dict[str, Any] = schemas["$defs"]
    return definitions


@dataclass(frozen=True)
class Routed:
    """One routing outcome: the decision, where it came from and whether the cache answered."""

    decision: Decision
    source: str  # policy / session / pinned / fallback
    cached: bool = False

    def headers(self) -> dict[str, str]:
        """The x-router-* decision headers (printable ASCII only)."""
        out = {f"x-router-{name}": value for name, value in self.decision.header_fields().items()}
        out["x-router-cache"] = "hit" if self.cached else "miss"
        return out

    def to_json(self) -> dict[str, Any]:
        """The decision with its source, for /v1/route (a :class:`RouteDecision`)."""
        decision = RouteDecision.model_validate(
            {**self.decision.to_json(), "source": self.source, "cached": self.cached}
        )
        return decision.model_dump()
