"""The serve protocol without a server: request checks, stop sequences, response shapes."""

from __future__ import annotations

import json

import pytest

from localguard.guard import GuardResult, Intervention
from localguard.serve import protocol
from localguard.serve.protocol import APIError, Limits, parse
from localguard.serve.server import StopSequences

LIMITS = Limits(max_body_bytes=10_000, max_tokens=100, context=1000)


def chat(**fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def test_a_chat_request_becomes_plain_data() -> None:
    body = {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": t} for t in ("Hel", "lo")]},
        ],
        "max_completion_tokens": 7,
        "temperature": 0,
        "top_p": 0,
        "seed": 3,
        "stop": "END",
        "logit_bias": {"12": -100},
        "presence_penalty": 0.5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    request = parse("chat", json.dumps(body).encode(), LIMITS, False)
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    s = request.sampling
    assert (s.max_tokens, s.temperature, s.seed, s.logit_bias) == (7, 0.0, 3, {12: -100.0})
    assert 0 < s.top_p < 1e-6 and s.presence_penalty == 0.5
    assert request.stop == ["END"] and request.stream and request.include_usage
    assert request.guard_mode is None
    default = parse("chat", chat(), LIMITS, False).sampling
    assert (default.max_tokens, default.temperature) == (100, 1.0)  # OpenAI's default


def test_the_guard_mode_needs_the_server_s_leave() -> None:
    ask = chat(localguard={"guard_mode": "monitor"})
    with pytest.raises(APIError) as refused:
        parse("chat", ask, LIMITS, False)
    assert (
        refused.value.status == 403 and refused.value.body()["error"]["type"] == "permission_error"
    )
    assert parse("chat", ask, LIMITS, True).guard_mode == "monitor"
    with pytest.raises(APIError, match="on, monitor"):
        parse("chat", chat(localguard={"guard_mode": "off"}), LIMITS, True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "JSON"),
        (chat(temperature=True), "temperature must be a number"),
        (chat(max_tokens=0), "max_tokens must lie in"),
        (chat(logit_bias={"5": 101}), "logit_bias for 5"),
        (chat(stop=""), "stop must be"),
        (chat(tools=[{"type": "function"}]), "tools is not supported"),
        (chat(presence_penalty=2.5), "presence_penalty must lie"),
        (
            json.dumps(
                {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
            ).encode(),
            "only text content parts",
        ),
    ],  # fmt: skip
)
def test_bad_fields_are_named(body: bytes, message: str) -> None:
    with pytest.raises(APIError, match=message) as error:
        parse("chat", body, LIMITS, False)
    assert error.value.status == 400


def test_a_completion_request_takes_one_prompt() -> None:
    body = json.dumps({"prompt": ["Once upon"], "max_tokens": 5}).encode()
    assert parse("completion", body, LIMITS, False).prompt == "Once upon"
    with pytest.raises(APIError, match="one prompt"):
        parse("completion", json.dumps({"prompt": ["a", "b"]}).encode(), LIMITS, False)
    with pytest.raises(APIError) as big:
        parse("completion", b"x" * 10_001, LIMITS, False)
    assert big.value.status == 413


def test_stop_sequences_never_send_text_past_a_stop() -> None:
    sent: list[str] = []
    stops = StopSequences(["STOP", "\n\n"], sent.append)
    for piece in ["Hello wor", "ld, ST", "O", "P and more"]:
        stops.add(piece)
    assert stops.hit and stops.close() == "Hello world, " and "".join(sent) == "Hello world, "
    assert all("S" not in piece for piece in sent)
    sent.clear()
    free = StopSequences([], sent.append)
    for piece in ["a", "b"]:
        free.add(piece)
    assert sent == ["a", "b"] and free.close() == "ab" and not free.hit


def result(interventions: list[Intervention], finish: str = "eos") -> GuardResult:
    return GuardResult(
        text="Sure. I can't help with that.",
        tokens=list(range(8)),
        response_logits=[0.0] * 8,
        finish=finish,
        query_logit=-2.5,
        interventions=interventions,
        settings={"mode": "on", "query_threshold": 0.0, "response_threshold": float("inf")},
        prompt_tokens=5,
        steps=8,
    )


def test_a_refusal_is_content_filter_with_its_text_and_the_extension() -> None:
    refused = result([Intervention(6, 2, "response", [3.0, 4.0], 1.0, "refuse", 4)])
    assert protocol.finish_reason(refused, False) == "content_filter"
    decode = lambda tokens: " ".join(str(t) for t in tokens)  # noqa: E731
    assert protocol.refusal_text(refused, decode) == "2 3 4 5 6 7"
    ext = protocol.extension(refused)
    assert ext["action"] == "refuse" and ext["at"] == 2 and ext["scores"] == [3.0, 4.0]
    assert ext["query_score"] == -2.5 and ext["response_threshold"] is None  # inf is not JSON
    clean = result([])
    assert protocol.finish_reason(clean, False) == "stop"
    assert protocol.finish_reason(result([], "length"), False) == "length"
    assert protocol.finish_reason(result([], "halted"), True) == "stop"
    assert protocol.refusal_text(clean, decode) is None
    assert protocol.extension(clean)["action"] == "none"
    flagged = result([Intervention(3, 1, "response", [2.0], 1.0, "flag")])
    assert protocol.finish_reason(flagged, False) == "stop"  # monitor mode only reports
