"""Refusals in the proxy's own words: a field type carries the :class:`~prefill_router.errors.ApiError`
its error becomes, and :func:`api_error` turns the first error of a validation into it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import (
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from prefill_router.errors import ApiError

REFUSED = "refused"  # the pydantic error type that carries the ApiError a client gets


def refused(message: str, param: str | None, code: str | None = None) -> PydanticCustomError:
    """The pydantic error that carries a refusal."""
    # The ApiError rides in the context: pydantic-core could not hold a message with a lone surrogate.
    refusal = ApiError(400, message, param=param, code=code)
    return PydanticCustomError(REFUSED, "refused by the proxy", {"refusal": refusal})


def refuse_as(param: str, message: str | Callable[[Any], str], *, null: bool = True) -> WrapValidator:
    """Any error of the annotated type becomes this refusal (``message``: a text, or one made from
    the value); ``null=False`` refuses an explicit null as well (absent is still fine)."""

    def wrap(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value is None and not null:
            raise refused(message if isinstance(message, str) else message(value), param)
        try:
            return handler(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == REFUSED:  # worded further in (a message of ``messages``): keep it
                raise PydanticCustomError(REFUSED, "refused by the proxy", first.get("ctx")) from None
            raise refused(message if isinstance(message, str) else message(value), param) from None

    return WrapValidator(wrap)


def api_error(exc: ValidationError) -> ApiError:
    """The first error of a validation as the ApiError the client gets (fields in check order)."""
    error = exc.errors()[0]
    if error["type"] == REFUSED:
        refusal: ApiError = error.get("ctx", {})["refusal"]
        return refusal
    where = ".".join(str(part) for part in error["loc"])  # a field whose type has no words of its own
    return ApiError(400, f"{where or 'the body'}: {error['msg']}", param=where or None)


def bad(message: str, param: str | None = None) -> ApiError:
    """A 400 refusal."""
    return ApiError(400, message, param=param)


def shown(value: Any) -> str:
    """``value``'s repr, at most 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
