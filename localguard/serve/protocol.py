"""OpenAI's HTTP API shapes, without HTTP: requests parsed and checked into plain data, and the
response objects, stream chunks and error bodies that the server writes.

Everything a client sends is untrusted: a bad field is an APIError (a 4xx with OpenAI's error
body, naming the field), and nothing here can turn the guard off. The guard mode may be asked
for (`localguard.guard_mode`, "on" or "monitor") only when the server allows it.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from localguard.backends.base import Sampling
from localguard.errors import InputError
from localguard.guard import GuardResult
from localguard.recipe import schema_field

EXTENSION = "localguard"  # the extension object's key in each choice (and in requests)
CLIENT_GUARD_MODES = ("on", "monitor")  # what a request may ask for, when the server allows
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
ROLES = ("system", "developer", "user", "assistant")
# OpenAI fields this server does not implement, with the value that asks for nothing
UNSUPPORTED = {
    "tools": [],
    "functions": [],
    "logprobs": False,
    "suffix": "",
    "echo": False,
    "best_of": 1,
}


class APIError(Exception):
    """A request the server refuses: HTTP status and OpenAI's error object."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        error = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        return {"error": error}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_body_bytes: int = schema_field("serve", "max_body_bytes")
    max_tokens: int = schema_field("serve", "max_tokens_limit")  # also a request's default
    context: int = 4096  # prompt tokens + max_tokens must fit the model's context


@dataclass
class Request:
    """A checked request. kind: "chat" (messages) or "completion" (prompt text)."""

    kind: str
    model: str
    sampling: Sampling
    messages: list[dict] = field(default_factory=list)
    prompt: str = ""
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    guard_mode: str | None = None  # None: the server's


def parse(kind: str, body: bytes, limits: Limits, allow_guard_mode: bool) -> Request:
    """A request body of /v1/chat/completions (kind "chat") or /v1/completions ("completion")."""
    check_body_size(len(body), limits)
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise APIError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError("the request body must be a JSON object")
    if _get(data, "n", int, 1) != 1:
        raise APIError("only n = 1 is supported", param="n")
    for key, neutral in UNSUPPORTED.items():
        if data.get(key) not in (None, neutral):
            raise APIError(f"{key} is not supported by localguard serve", param=key)
    request = Request(
        kind=kind,
        model=_get(data, "model", str, ""),
        sampling=_sampling(data, limits),
        stop=_stop(data.get("stop")),
        stream=_get(data, "stream", bool, False),
        guard_mode=_guard_mode(data.get(EXTENSION), allow_guard_mode),
    )
    options = _get(data, "stream_options", dict, None) or {}
    request.include_usage = _get(options, "include_usage", bool, False, "stream_options.")
    if kind == "chat":
        request.messages = _messages(data.get("messages"))
    else:
        request.prompt = _prompt(data.get("prompt"))
    return request


def check_body_size(size: int, limits: Limits) -> None:
    """413 for a body over the limit (the server checks Content-Length before reading it)."""
    if size > limits.max_body_bytes:
        raise APIError(
            f"the request body has {size} bytes; this server takes at most {limits.max_body_bytes}",
            status=413,
            code="request_too_large",
        )


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _get(data: dict, key: str, kind: type, default, where: str = ""):
    """data[key] of the given JSON type, or default when absent or null (bool is no int)."""
    value = data.get(key)
    if value is None:
        return default
    kinds = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kinds):
        raise APIError(f"{where}{key} must be {_TYPE_NAMES[kind]}", param=f"{where}{key}")
    return value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_TYPE_NAMES.update({dict: "an object", list: "an array"})


def _number(data: dict, key: str, default: float, low: float, high: float) -> float:
    value = float(_get(data, key, float, default))
    if not (math.isfinite(value) and low <= value <= high):
        raise APIError(f"{key} must lie in [{low:g}, {high:g}], not {value:g}", param=key)
    return value


def _sampling(data: dict, limits: Limits) -> Sampling:
    max_tokens = _get(data, "max_completion_tokens", int, None)
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = _get(data, "max_tokens", int, limits.max_tokens), "max_tokens"
    if not 1 <= max_tokens <= limits.max_tokens:
        raise APIError(
            f"{key} must lie in [1, {limits.max_tokens}] on this server, not {max_tokens}",
            param=key,
        )
    seed = _get(data, "seed", int, None)
    try:
        return Sampling(
            temperature=_number(data, "temperature", 1.0, 0.0, 2.0),
            top_p=max(_number(data, "top_p", 1.0, 0.0, 1.0), 1e-9),  # 0: the top token
            top_k=max(0, _get(data, "top_k", int, 0)),
            max_tokens=max_tokens,
            seed=seed,
            logit_bias=_logit_bias(data.get("logit_bias")),
            presence_penalty=_number(data, "presence_penalty", 0.0, -2.0, 2.0),
            frequency_penalty=_number(data, "frequency_penalty", 0.0, -2.0, 2.0),
        )
    except InputError as e:
        raise APIError(str(e)) from None


def _logit_bias(value) -> dict[int, float]:
    """OpenAI's logit_bias: token id (a string) -> bias in [-100, 100]. The Guard adds it before
    it masks the safety rows, so a bias on a safety row changes nothing."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise APIError("logit_bias must be an object of token id -> bias", param="logit_bias")
    out = {}
    for token, bias in value.items():
        if not str(token).isdigit() or isinstance(bias, bool) or not isinstance(bias, int | float):
            raise APIError(f"logit_bias entry {token!r}: expected a token id and a number")
        if not -100 <= bias <= 100:
            raise APIError(f"logit_bias for {token} must lie in [-100, 100]", param="logit_bias")
        out[int(token)] = float(bias)
    return out


def _stop(value) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise APIError("stop must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise APIError(f"at most {MAX_STOP_SEQUENCES} stop sequences", param="stop")
    return list(stops)


def _guard_mode(extension, allowed: bool) -> str | None:
    if extension is None:
        return None
    if not isinstance(extension, dict):
        raise APIError(f"{EXTENSION} must be an object", param=EXTENSION)
    mode = extension.get("guard_mode")
    if mode is None:
        return None
    param = f"{EXTENSION}.guard_mode"
    if not allowed:
        raise APIError(
            "this server does not let a request change the guard (its operator can start it "
            "with --allow-client-guard-mode)",
            status=403,
            param=param,
            code="guard_mode_not_allowed",
            kind="permission_error",
        )
    if mode not in CLIENT_GUARD_MODES:
        raise APIError(f"{param} must be one of {', '.join(CLIENT_GUARD_MODES)}", param=param)
    return mode


def _text(content, where: str) -> str:
    """A message's content: a string, or a list of text parts (other parts are refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise APIError(f"{where}: only text content parts are supported", param=where)
            texts.append(_get(part, "text", str, "", f"{where}."))
        return "".join(texts)
    raise APIError(f"{where} must be a string or a list of text parts", param=where)


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise APIError("messages must be a non-empty array", param="messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise APIError(f"{where}.role must be one of {', '.join(ROLES)}", param=where)
        content = _text(message.get("content"), f"{where}.content")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def _prompt(value) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value:
        raise APIError("prompt must be a non-empty string (one prompt per request)", "prompt")
    return value


# --- responses --------------------------------------------------------------------------------


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def object_name(kind: str, chunk: bool = False) -> str:
    if kind == "chat":
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def finish_reason(result: GuardResult, stopped_by_sequence: bool) -> str:
    """OpenAI's finish_reason: content_filter when the guard refused or cut the reply."""
    if result.intervened:
        return "content_filter"
    if stopped_by_sequence or result.finish == "eos":
        return "stop"
    return "length"


def refusal_text(result: GuardResult, decode: Callable[[list[int]], str]) -> str | None:
    """The part of the reply the guard forced: its tokens from the first refusal's turning
    point on (the refusal prefix and the model's reason)."""
    refusals = [i for i in result.interventions if i.action == "refuse"]
    if not refusals:
        return None
    return decode(result.tokens[refusals[0].at :]).lstrip() or None


def extension(result: GuardResult) -> dict:
    """The localguard object in a choice: what the guard did, where, and its scores."""
    acted = [i for i in result.interventions if i.action in ("refuse", "stop", "flag")]
    first = acted[0] if acted else None
    return {
        "action": first.action if first else "none",
        "output": first.output if first else None,
        "at": first.at if first else None,
        "query_score": _finite(result.query_logit),
        "query_threshold": _finite(result.settings.get("query_threshold")),
        "response_threshold": _finite(result.settings.get("response_threshold")),
        "scores": [_finite(s) for s in first.scores] if first else [],
        "interventions": len(acted),
        "guard_mode": result.settings.get("mode"),
    }


def _finite(x) -> float | None:
    """A logit for JSON (inf and nan are not JSON)."""
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), 4)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    request: Request,
    rid: str,
    model: str,
    text: str,
    finish: str,
    refusal: str | None,
    ext: dict | None,
    counts: tuple[int, int],
) -> dict:
    """The whole (non-streamed) response object."""
    if request.kind == "chat":
        message = {"role": "assistant", "content": text, "refusal": refusal}
        choice: dict = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if ext is not None:
        choice[EXTENSION] = ext
    return {
        "id": rid,
        "object": object_name(request.kind),
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(*counts),
    }


def chunk(
    request: Request,
    rid: str,
    model: str,
    delta: dict | None = None,
    finish: str | None = None,
    ext: dict | None = None,
    counts: tuple[int, int] | None = None,
) -> dict:
    """One streamed chunk: a delta (chat) or a text piece (completion); with counts, the usage
    chunk that closes a stream asked for with stream_options.include_usage (no choices)."""
    out: dict = {
        "id": rid,
        "object": object_name(request.kind, chunk=True),
        "created": int(time.time()),
        "model": model,
        "choices": [],
    }
    if counts is not None:
        out["usage"] = usage(*counts)
        return out
    delta = delta or {}
    if request.kind == "chat":
        choice: dict = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        text = delta.get("content", "")
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if ext is not None:
        choice[EXTENSION] = ext
    out["choices"] = [choice]
    return out


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
