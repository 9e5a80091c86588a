"""The request bodies `prag serve` reads (pydantic): OpenAI's chat-completion request with prag's `prag` object, and
the /v1/retrieve request. Fields OpenAI defines that prag does not use are accepted and ignored; prag's own objects
refuse unknown fields."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prag_core.answer.config import MODES, UPDATES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PragOptions(_Strict):
    """The request's `prag` object: where its answer's knowledge comes from (None: the server's default)."""

    mode: Literal[MODES] | None = None
    top_k: int | None = Field(None, ge=1)
    documents: list[str] | None = Field(None, min_length=1)
    update: Literal[UPDATES] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: str
    content: str | list[TextPart] | None = None

    def text(self):
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat-completion request; fields prag does not use (top_p, user, ...) are accepted and ignored."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    prag: PragOptions | None = None


class RetrieveRequest(_Strict):
    question: str
    top_k: int | None = Field(None, ge=1)
