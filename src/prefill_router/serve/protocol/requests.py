"""The requests as the proxy reads them: :class:`ChatCompletionRequest` (every other field passes
through) and :class:`DecisionRequest`, the checks the handlers run first, and the text routed on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Required

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from prefill_router.serve.config import ROUTER_MODEL
from prefill_router.serve.protocol._refusals import api_error, bad, refuse_as, refused
from prefill_router.serve.protocol.options import MAX_NAME_CHARS, Overrides, RouterOptions

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# How a lone surrogate reaches json.loads: as an escape, or as raw bytes it decodes with surrogatepass
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")

ModelName = Annotated[
    str,
    Strict(),
    Field(
        min_length=1, max_length=MAX_NAME_CHARS,
        description="'router', a profile of the proxy, or a target name (pinned).",
    ),
    refuse_as(
        "model",
        lambda model: (
            f"'model' has {len(model)} characters; model names have at most {MAX_NAME_CHARS}"
            if isinstance(model, str) and len(model) > MAX_NAME_CHARS
            else "'model' must be 'router', a profile or a target name"
        ),
    ),
]  # fmt: skip


@with_config(ConfigDict(extra="allow"))
class ChatMessage(TypedDict, total=False):
    """One chat message as the proxy reads it (a dict; every other key passes through)."""

    role: Required[Annotated[str, Strict(), Field(description="system, user, assistant, tool ...")]]
    content: Annotated[Any, Field(description="A string, or a list of parts (the text parts are routed on).")]


def _check_messages(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError as exc:
        index = exc.errors()[0]["loc"][:1]  # the first bad message, or () for the list itself
        if index:
            raise refused(
                f"messages[{index[0]}] must be an object with a 'role'", f"messages[{index[0]}]"
            ) from None
        raise refused("'messages' must be a non-empty list of chat messages", "messages") from None


Messages = Annotated[
    list[ChatMessage], Field(min_length=1, description="The chat messages."), WrapValidator(_check_messages)
]


def _has_text(text: str) -> str:
    if not text.strip():
        raise ValueError("blank")
    return text


PromptText = Annotated[str, Strict(), AfterValidator(_has_text)]
Prompts = Annotated[list[PromptText], Field(min_length=1)]

_MODEL = TypeAdapter(ModelName)
_MESSAGES = TypeAdapter(Messages)


class ChatCompletionRequest(BaseModel):
    """A chat completion request as the proxy reads it; every other OpenAI field passes through
    unchanged."""

    # The handler checks ``model`` (then looks it up) and ``messages`` first (check_model,
    # check_messages), then the client's rights; ``parse`` refuses ``router``, then ``stream``.
    model_config = ConfigDict(extra="allow", frozen=True, title="ChatCompletionRequest")

    model: ModelName
    messages: Messages
    router: RouterOptions | None = Field(None, description="The proxy's routing options (removed upstream).")
    stream: Annotated[
        bool,
        Strict(),
        Field(description="Stream the answer as server-sent events."),
        refuse_as("stream", "'stream' must be true or false"),
    ] = False
    user: Any = Field(None, description="The OpenAI end-user id; a string keys session affinity.")

    @model_validator(mode="before")
    @classmethod
    def _absent_as_null(cls, data: Any) -> Any:
        """A missing ``model`` or ``messages`` is refused in the same words as a null one."""
        return {"model": None, "messages": None, **data} if isinstance(data, Mapping) else data

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> ChatCompletionRequest:
        """The body's fields the proxy reads.

        Raises:
            ApiError: 400 naming the first bad field.
        """
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise api_error(exc) from None

    @property
    def overrides(self) -> Overrides:
        """The ``router`` options (none: the profile's)."""
        return Overrides() if self.router is None else self.router.overrides()

    @property
    def session_user(self) -> str | None:
        """The ``user`` field when it is a string (a session id); anything else is passed on unread."""
        return self.user if isinstance(self.user, str) else None


_SOURCES = ("prompts", "prompt", "messages")  # of a route request's text, the first present is read


class DecisionRequest(BaseModel):
    """A ``/v1/route`` request: ``prompts`` (a batch), ``prompt`` or ``messages``, the first present
    (the others are not read); other fields are ignored."""

    # The /v1/route body; prefill_router.RouteRequest is the Python API's routing options.
    model_config = ConfigDict(extra="ignore", frozen=True, title="DecisionRequest")

    model: ModelName = ROUTER_MODEL
    router: RouterOptions | None = Field(None, description="The proxy's routing options.")
    prompts: Annotated[
        Prompts | None,
        Field(description="A batch of prompts (at most max_prompts): a list of decisions."),
        refuse_as("prompts", "'prompts' must be a non-empty list of non-empty strings", null=False),
    ] = None
    prompt: Annotated[
        PromptText | None,
        Field(description="One prompt."),
        refuse_as("prompt", "'prompt' must be a non-empty string", null=False),
    ] = None
    messages: Annotated[
        Messages | None,
        refuse_as("messages", "'messages' must be a non-empty list of chat messages", null=False),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _first_source_only(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for i, key in enumerate(_SOURCES):
                if key in data:
                    return {k: v for k, v in data.items() if k not in _SOURCES[i + 1 :]}
        return data

    @field_validator("prompts", mode="before")
    @classmethod
    def _at_most_max_prompts(cls, prompts: Any, info: ValidationInfo) -> Any:
        limit = (info.context or {}).get("max_prompts")
        if limit is not None and isinstance(prompts, list) and len(prompts) > limit:
            raise refused(
                f"'prompts' holds {len(prompts)} prompts; one request may hold at most {limit} "
                "(max_prompts); route large sets with `prefill-router route-batch`",
                "prompts", "too_many_prompts",
            )  # fmt: skip
        return prompts

    @model_validator(mode="after")
    def _one_source(self) -> DecisionRequest:
        if self.prompts is None and self.prompt is None and self.messages is None:
            raise refused("send 'prompt', 'prompts' or 'messages'", "prompt")
        return self

    @classmethod
    def parse(cls, body: Mapping[str, Any], *, max_prompts: int | None = None) -> DecisionRequest:
        """The request, with at most ``max_prompts`` prompts.

        Raises:
            ApiError: 400 naming the first bad field (``too_many_prompts`` past the limit).
        """
        try:
            return cls.model_validate(body, context={"max_prompts": max_prompts})
        except ValidationError as exc:
            raise api_error(exc) from None

    @property
    def overrides(self) -> Overrides:
        """The ``router`` options (none: the profile's)."""
        return Overrides() if self.router is None else self.router.overrides()

    def texts(self, mode: str) -> list[str]:
        """The texts to route: the prompts, the prompt, or the messages' routing text (``mode``)."""
        if self.prompts is not None:
            return list(self.prompts)
        if self.prompt is not None:
            return [self.prompt]
        assert self.messages is not None  # _one_source
        return [routing_text(self.messages, mode)]


def check_model(model: Any) -> str:
    """The request's ``model`` if it can name a model at all; 400 before any look-up otherwise.

    Raises:
        ApiError: 400 for a missing, empty, non-string or over-long (> 256 characters) model.
    """
    try:
        return _MODEL.validate_python(model)
    except ValidationError as exc:
        raise api_error(exc) from None


def check_messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The ``messages`` list; raises ApiError 400 when it is missing, empty or malformed."""
    try:
        return list(_MESSAGES.validate_python(body.get("messages")))
    except ValidationError as exc:
        raise api_error(exc) from None


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
                raise bad(
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


def user_text(messages: Sequence[Mapping[str, Any]], mode: str = "last_user") -> str:
    """The text a conversation is routed on (empty when it holds none): its last or first user
    message with text, or the whole conversation (``mode``: last_user / first_user / conversation).

    Example:
        >>> user_text([{"role": "user", "content": "hi"}, {"role": "user", "content": "sum 2+2"}])
        'sum 2+2'
    """
    if mode == "conversation":
        return "\n".join(f"{m['role']}: {message_text(m)}" for m in messages if message_text(m).strip())
    users = [message_text(m) for m in messages if m.get("role") == "user"]
    users = [u for u in users if u.strip()]
    return (users[0] if mode == "first_user" else users[-1]) if users else ""


def routing_text(messages: Sequence[Mapping[str, Any]], mode: str) -> str:
    """:func:`user_text` of a request.

    Raises:
        ApiError: 400 when that text is empty (no user text to route on).

    Example:
        >>> turns = [{"role": "user", "content": "hi"}, {"role": "user", "content": "sum 2+2"}]
        >>> routing_text(turns, "last_user")
        'sum 2+2'
    """
    text = user_text(messages, mode)
    if not text.strip():
        raise bad("the messages hold no user text to route on", "messages")
    return text
