"""Request and response schemas of the HTTP API (pydantic; they become the OpenAPI spec)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GenerateResponse(BaseModel):
    id: str = Field(description="Served-output id: rate it with POST /feedback.")
    text: str
    model_version: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class GenerateRequest(BaseModel):
    """``POST /generate/stream``'s body: the same fields as ``POST /generate``."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(description="The user's message.")
    max_new_tokens: int | None = Field(None, ge=1, description="Reply length limit in tokens.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(1.0, ge=0.0, le=1.0, description="Nucleus mass; 0 keeps only the top token.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Same seed, same reply.")


class CompareRequest(BaseModel):
    """``POST /compare``'s body: one message to answer twice (the champion and the candidate, when one is served)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(description="The user's message.")
    max_new_tokens: int | None = Field(None, ge=1, description="Reply length limit in tokens.")


class CompareReply(BaseModel):
    id: str = Field(description="Served-output id (send it back as chosen_id / rejected_id).")
    text: str


class CompareResponse(BaseModel):
    """Two replies in random order, blind: which model wrote which is only in the store."""

    replies: list[CompareReply] = Field(min_length=2, max_length=2)
    group_id: str = Field(description="Both replies' group in the store.")
    candidate: bool = Field(description="True when one reply is the candidate's (else two of the champion's).")


class FeedbackResponse(BaseModel):
    accepted: bool
    kind: Literal["rating", "pair"]
    duplicate: bool = Field(description="True when the same feedback was already stored (it is stored once).")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat-completions request (the fields this service honours; unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, description="Ignored: the service answers with its current champion.")
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(None, ge=1, description="Reply length limit in tokens.")
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0, description="Nucleus mass; 0 keeps only the most likely token.")
    n: int = Field(1, ge=1, le=64)
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the reply.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=200)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ChoiceMessage
    finish_reason: str
    id: str = Field(description="This choice's served-output id (rate or compare it through /feedback).")


class ChatResponse(BaseModel):
    id: str = Field(description="The first choice's served-output id.")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    model_version: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class QueueItem(BaseModel):
    id: str
    prompt: str
    reply: str
    model_version: str
    created_at: str


class QueuePage(BaseModel):
    items: list[QueueItem]
    total: int = Field(description="Unrated outputs in all (not only this page).")
    offset: int
    limit: int


class ErrorBody(BaseModel):
    error: str
