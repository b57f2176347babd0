"""The Guard: its state machine on a scripted backend, and the MLX backend on real models."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from backend_checks import (
    chat,
    check_drawing_ahead_changes_nothing,
    check_guarded_generation,
    check_rewind_matches_fresh,
    check_rows_never_sampled,
    greedy,
)
from char_text import EOS, CharText

from localguard.backends.base import GuardBackend, HeadInfo, Sampling, Step, numpy_sampler
from localguard.encoding import hf_tokenizer
from localguard.errors import InputError
from localguard.guard import GuardSettings, generate, split_prefill

# --- a scripted backend -----------------------------------------------------------------------
# Tokens are the printable ASCII characters (id = ord - 32), then EOS, then the two safety rows.
# The "model" writes `plan` one character at a time; once the reply contains the refusal prefix
# it writes `after` and ends. The query logit is high when the prompt says "bad"; the response
# logit is high at every "x". Everything is a function of the tokens, so rewinds are honest.

Q_ROW, R_ROW = 96, 97
PREFIX = "NO"
UNSAFE, SAFE = 5.0, -5.0


class ScriptedBackend(CharText, GuardBackend):
    def __init__(self, plan: str, after: str = " ok", flagged: str = "x", tau=None, prefix=None):
        self.plan, self.after, self.flagged = plan, after, flagged
        self.head = HeadInfo(("query", "response"), np.array([0.0, 0.0]), tau, prefix)
        self.eos_ids = frozenset({EOS})
        self.safety_ids = (Q_ROW, R_ROW)
        self.vocab_size = 98
        self.seq: list[int] = []
        self.prompt_len = 0
        self.rewinds: list[tuple[int, int]] = []  # (from length, to length)

    @property
    def length(self) -> int:
        return len(self.seq)

    def reset(self) -> None:
        self.seq = []

    def close(self) -> None:
        self.seq = []

    def rewind(self, length: int) -> None:
        assert 0 <= length <= len(self.seq)
        self.rewinds.append((len(self.seq), length))
        del self.seq[length:]

    def _next(self) -> int:
        reply = self.decode(self.seq[self.prompt_len :])
        if PREFIX in reply:
            done = len(reply) - (reply.index(PREFIX) + len(PREFIX))
            rest = self.after[done:]
        else:
            rest = self.plan[len(reply) :]
        return ord(rest[0]) - 32 if rest else EOS

    def feed(self, tokens, every: bool = True) -> Step:
        safety = []
        for t in tokens:
            assert t not in self.safety_ids, "a safety row was fed"
            self.seq.append(int(t))
            prompt = self.decode(self.seq[: self.prompt_len])
            query = UNSAFE if "bad" in prompt else SAFE
            response = UNSAFE if t < EOS and chr(t + 32) in self.flagged else SAFE
            safety.append([query, response])
        logits = np.full(self.vocab_size, -10.0, np.float32)
        logits[self._next()] = 10.0
        logits[list(self.safety_ids)] = 50.0  # would win every draw if it were not masked
        return Step(self.masked(logits), np.array(safety))


def _run(backend, prompt="hello", prefill=None, **kwargs):
    sampling = kwargs.pop("sampling", Sampling(max_tokens=40))
    shown: list[tuple[int, str]] = []  # (reply tokens in the cache, text released) per release

    def on_text(piece: str) -> None:
        shown.append((backend.length - backend.prompt_len, piece))

    settings = GuardSettings(refusal_prefix=kwargs.pop("prefix", PREFIX), **kwargs)
    result = generate(backend, chat(prompt, prefill), settings, sampling, on_text)
    assert "".join(p for _, p in shown) == result.text  # the stream adds up to the reply
    return result, shown


# --- the state machine ------------------------------------------------------------------------


def test_safe_reply_passes_untouched_and_ends_at_eos() -> None:
    result, _ = _run(ScriptedBackend("abc."))
    assert result.text == "abc." and result.finish == "eos" and not result.interventions
    assert EOS not in result.tokens and result.query_logit == SAFE
    assert result.settings["sources"]["refusal_prefix"] == "settings"


def test_unsafe_query_forces_the_prefix_and_the_model_goes_on() -> None:
    backend = ScriptedBackend("sure, xx")
    result, shown = _run(backend, "a bad request")
    assert result.text == "NO ok" and result.finish == "eos"
    [event] = result.interventions
    assert (event.output, event.action, event.at, event.step) == ("query", "refuse", 0, 0)
    assert event.scores == [UNSAFE] and not backend.rewinds  # nothing of the plan was decoded
    assert shown[0] == (2, "NO")  # the guard's own prefix shows at once


def test_unsafe_query_drops_a_forced_assistant_start() -> None:
    result, _ = _run(ScriptedBackend("ignored"), "a bad request", prefill="Sure, here is")
    assert result.text == "NO ok" and result.interventions[0].output == "query"


def test_tau_unsafe_steps_rewind_to_the_turning_point() -> None:
    backend = ScriptedBackend("ab xxx cd")
    result, shown = _run(backend, tau=2)
    assert result.text == "ab NO ok"  # a space joins the prefix to the kept text
    [event] = result.interventions
    assert (event.output, event.action, event.at, event.dropped) == ("response", "refuse", 3, 2)
    assert event.scores == [UNSAFE, UNSAFE] and event.step == 5
    p = backend.prompt_len
    assert backend.rewinds == [(p + 5, p + 3)]  # the KV cache lost exactly the flagged tokens
    assert "x" not in "".join(piece for _, piece in shown)


def test_a_run_shorter_than_tau_is_left_alone() -> None:
    result, _ = _run(ScriptedBackend("ab xx cd"), tau=3)
    assert result.text == "ab xx cd" and not result.interventions


def test_a_window_counts_unsafe_verdicts_across_a_safe_one() -> None:
    plan = "ab x,x cd"  # unsafe, safe, unsafe: never two in a row
    consecutive, _ = _run(ScriptedBackend(plan), tau=2)
    assert consecutive.text == plan and not consecutive.interventions
    backend = ScriptedBackend(plan)
    windowed, shown = _run(backend, tau=2, window=3)
    assert windowed.text == "ab NO ok" and windowed.interventions[0].at == 3
    assert windowed.interventions[0].scores == [UNSAFE, SAFE, UNSAFE]
    assert "x" not in "".join(piece for _, piece in shown)
    wide, _ = _run(ScriptedBackend("ab x,,,,x cd"), tau=2, window=4)
    assert wide.text == "ab x,,,,x cd"  # the two fall in no window of 4
    with pytest.raises(InputError, match="window"):
        GuardSettings(tau=3, window=2).resolve(backend.head)


def test_an_unsafe_token_is_held_while_it_could_still_be_a_turning_point() -> None:
    # tau 2, window 5: the x stays unshown for four more verdicts, not just two
    result, shown = _run(ScriptedBackend("x abcdefg"), tau=2, window=5)
    assert not result.interventions and result.text == "x abcdefg"
    assert shown[0] == (5, "x a")  # x released once it left every window, not at 3


def test_held_back_streaming_shows_a_token_only_after_tau_more_verdicts() -> None:
    for tau in (1, 2, 3):
        result, shown = _run(ScriptedBackend("abcdefgh"), tau=tau)
        released = 0
        for decoded, piece in shown[:-1]:  # the last release is the end-of-reply flush
            released += len(piece)
            assert released == decoded - tau
        assert result.text == "abcdefgh"


def test_no_flagged_token_is_ever_shown_and_the_prefix_is_final() -> None:
    backend = ScriptedBackend("a xx b", after=" xx then x")
    result, shown = _run(backend, tau=2, max_interventions=5)
    text = "".join(piece for _, piece in shown)
    assert "xx" not in text and len(result.interventions) >= 2
    assert [i.action for i in result.interventions] == ["refuse"] * len(result.interventions)
    assert text == result.text and text.startswith("a NO")


def test_after_max_interventions_the_reply_stops_at_the_turning_point() -> None:
    backend = ScriptedBackend("a xx b", after=" xx then")
    result, _ = _run(backend, tau=2, max_interventions=1)
    assert [i.action for i in result.interventions] == ["refuse", "stop"]
    assert result.finish == "stopped" and result.text == "a NO "


def test_monitor_mode_records_but_never_intervenes() -> None:
    backend = ScriptedBackend("ab xxx cd")
    result, shown = _run(backend, "a bad request", mode="monitor", tau=2)
    assert result.text == "ab xxx cd" and not backend.rewinds
    assert [(i.output, i.action, i.at) for i in result.interventions] == [
        ("query", "flag", 0),
        ("response", "flag", 3),  # once per run, however long it gets
    ]
    assert not result.intervened
    assert all(n == len(p) for n, p in shown[:1])  # no holding back: nothing will be rewound


def test_off_mode_ignores_the_head() -> None:
    backend = ScriptedBackend("ab xxx cd")
    result, _ = _run(backend, "a bad request", mode="off", tau=1)
    assert result.text == "ab xxx cd" and not result.interventions and not backend.rewinds
    assert result.query_logit == UNSAFE  # still reported


def test_a_forced_start_is_judged_like_generated_text() -> None:
    result, _ = _run(ScriptedBackend("ignored"), prefill="Sure, xx", tau=2)
    assert result.text == "Sure, NO ok"
    assert result.interventions[0].at == len("Sure, ")
    off, _ = _run(ScriptedBackend("Sure, xx!"), prefill="Sure, xx", mode="off")
    assert off.text == "Sure, xx!"


def test_at_the_token_limit_an_open_run_is_settled_before_stopping() -> None:
    # the limit falls between the two x: decoding goes on past it (hidden) to decide
    result, shown = _run(ScriptedBackend("abcx xy"), tau=2, sampling=Sampling(max_tokens=4))
    assert result.finish == "length" and result.tokens == [ord(c) - 32 for c in "abcx"][:4]
    result, _ = _run(ScriptedBackend("abcxxy"), tau=2, sampling=Sampling(max_tokens=4))
    assert "x" not in result.text and result.interventions[0].at == 3
    assert result.finish == "length" and len(result.tokens) == 4


def test_thresholds_tau_and_prefix_resolve_from_settings_then_head_then_defaults() -> None:
    head = HeadInfo(("query", "response"), np.array([0.5, 1.5]), tau=3, refusal_prefix="Nope")
    cfg = GuardSettings().resolve(head)
    assert (cfg.query_threshold, cfg.response_threshold, cfg.tau) == (0.5, 1.5, 3)
    assert cfg.refusal_prefix == "Nope" and cfg.sources["tau"] == "head"
    cfg = GuardSettings(response_threshold=0.5, tau=1).resolve(head)
    assert cfg.response_threshold == 0.0 and cfg.tau == 1 and cfg.sources["tau"] == "settings"
    bare = HeadInfo(("response", "query"), np.array([1.0, 2.0]))
    cfg = GuardSettings().resolve(bare)
    assert (
        cfg.query_threshold == 2.0 and cfg.tau == 2 and cfg.sources["refusal_prefix"] == "default"
    )
    assert GuardSettings(query_threshold=1.0).resolve(bare).query_threshold == math.inf
    with pytest.raises(InputError, match="guard mode"):
        GuardSettings(mode="loud").resolve(head)
    with pytest.raises(InputError, match="no output 'query'"):
        GuardSettings().resolve(HeadInfo(("response",), np.array([0.0])))


def test_recipe_section_maps_to_settings_and_sampling() -> None:
    section = {
        "mode": "monitor",
        "threshold": 0.9,
        "tau": 3,
        "refusal_prefix": "No.",
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "max_tokens": 64,
    }
    settings, sampling = GuardSettings.from_recipe(section)
    assert settings.query_threshold == settings.response_threshold == 0.9
    assert settings.mode == "monitor" and settings.tau == 3
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_tokens) == (
        0.7,
        0.9,
        40,
        64,
    )


def _recorder(steps: list):
    """An on_step callback that keeps (score, flagged) per call."""
    return lambda score, flagged: steps.append((score, flagged))


def _stepped(backend, prompt="hello", **kwargs):
    steps: list[tuple[float, bool]] = []
    settings = GuardSettings(refusal_prefix=PREFIX, **kwargs)
    result = generate(
        backend, chat(prompt), settings, Sampling(max_tokens=40), on_step=_recorder(steps)
    )
    return result, steps


def test_on_step_reports_every_fed_token_with_its_verdict_rewound_ones_too() -> None:
    backend = ScriptedBackend("ab xxx cd")
    result, steps = _stepped(backend, tau=2)
    assert result.text == "ab NO ok" and len(steps) == result.steps == 11
    safe, unsafe = (SAFE, False), (UNSAFE, True)
    # a b ' ' x x | rewound; the forced "NO" (never flagged), " ok", EOS
    assert steps == [safe] * 3 + [unsafe] * 2 + [safe] * 6
    monitored, steps = _stepped(ScriptedBackend("ab xxx cd"), mode="monitor", tau=2)
    assert len(steps) == monitored.steps and [f for _, f in steps].count(True) == 3
    off, steps = _stepped(ScriptedBackend("ab xxx cd"), mode="off")
    assert [s for s, _ in steps] == off.response_logits + [SAFE]  # + EOS, not in the reply
    assert not any(f for _, f in steps) and steps[3][0] == UNSAFE  # scored, never flagged


class SpaceStrippingBackend(ScriptedBackend):
    """decode drops the leading space of what it decodes, as SentencePiece decoders do, and
    counts the tokens the Guard has it decode."""

    decoded = 0
    planning = False

    def feed(self, tokens, every: bool = True) -> Step:
        self.planning = True  # the script reads its own text unchanged
        try:
            return super().feed(tokens, every)
        finally:
            self.planning = False

    def decode(self, tokens) -> str:
        text = super().decode(tokens)
        if self.planning:
            return text
        self.decoded += len(tokens)
        return text[1:] if text.startswith(" ") else text


def test_streaming_decodes_incrementally_and_adds_up_under_a_leading_space_rule() -> None:
    plan = "one two three four five six seven eight nine ten eleven twelve"
    backend = SpaceStrippingBackend(plan)
    result, shown = _run(backend, tau=2, sampling=Sampling(max_tokens=200))
    assert result.text == plan and not result.interventions  # a window may start at " two"
    assert len(shown) > 20  # streamed piece by piece
    # the whole reply decoded at every release would be ~len(plan)**2 / 2 tokens
    assert backend.decoded < 8 * len(plan)


def test_prefill_split_and_empty_chats() -> None:
    msgs, prefill = split_prefill(chat("hi", "Sure"))
    assert msgs == chat("hi") and prefill == "Sure"
    with pytest.raises(InputError, match="at least one message"):
        split_prefill([{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize("temperature", [0.0, 1.0, 5.0])
def test_logit_bias_cannot_unmask_the_safety_rows(temperature: float) -> None:
    bias = {Q_ROW: 1e9, R_ROW: 1e9, ord("z") - 32: 1000.0}  # teeth: the bias does reach others
    sampling = Sampling(temperature=temperature, max_tokens=30, seed=1, logit_bias=bias)
    result, _ = _run(ScriptedBackend("abc"), mode="off", sampling=sampling)
    assert set(result.tokens) == {ord("z") - 32}


def test_numpy_sampler_respects_top_k_and_top_p() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    draws = {numpy_sampler(Sampling(temperature=1.0, top_k=2, seed=s))(logits) for s in range(50)}
    assert draws == {0, 1}
    draws = {numpy_sampler(Sampling(temperature=1.0, top_p=0.6, seed=s))(logits) for s in range(50)}
    assert draws == {0, 1}
    assert numpy_sampler(Sampling())(logits) == 0
    with pytest.raises(InputError, match="top_p"):
        Sampling(top_p=0.0)


# --- the MLX backend --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlx_backend(starter_model: Path, stream_head: Path):
    from localguard.backends.mlx.guarded import MLXGuardBackend

    return MLXGuardBackend.load(starter_model, stream_head)


def test_mlx_safety_logits_are_the_heads_on_the_models_hidden_states(
    mlx_backend, stream_head: Path
) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from localguard.backends.mlx.hidden import final_hidden
    from localguard.safety_head import load_head

    head = load_head(stream_head)
    names = [name for name, _ in tree_flatten(mlx_backend.model.parameters())]
    assert any("lora_a" in name for name in names)  # the head's own adapter was loaded
    prompt = mlx_backend.encode_chat(chat("How do I pick a lock?"))
    mlx_backend.reset()
    first = mlx_backend.feed(prompt[:-3])
    rest = mlx_backend.feed(prompt[-3:])
    hidden = np.array(final_hidden(mlx_backend.model, mx.array([prompt]))[0].astype(mx.float32))
    expected = head.logits(hidden)
    got = np.concatenate([first.safety, rest.safety])
    assert got.shape == (len(prompt), 2) and np.abs(got - expected).max() < 1e-3
    assert mlx_backend.vocab_size == 1026 and mlx_backend.safety_ids == (1024, 1025)
    assert np.all(np.isneginf(rest.logits[1024:])) and np.isfinite(rest.logits[:1024]).all()


@pytest.mark.parametrize("trimmable", [True, False])
def test_mlx_rewind_truncates_the_kv_cache(mlx_backend, monkeypatch, trimmable: bool) -> None:
    import localguard.backends.mlx.guarded as guarded

    if not trimmable:  # the rebuild path, for caches that cannot be trimmed
        monkeypatch.setattr(guarded, "can_trim_prompt_cache", lambda cache: False)
    b = mlx_backend
    prompt = b.encode_chat(chat("Tell me about the river."))
    check_rewind_matches_fresh(b, prompt, b.encode_text(" I can't help with that."), 1e-4)


@pytest.mark.parametrize("trim_ahead", [True, False])
def test_mlx_drawing_ahead_changes_no_reply(mlx_backend, monkeypatch, trim_ahead: bool) -> None:
    import localguard.backends.mlx.guarded as guarded

    if not trim_ahead:  # the step ahead is dropped by rebuilding the cache instead
        trim = guarded.trim_prompt_cache
        monkeypatch.setattr(guarded, "trim_prompt_cache", lambda c, n: 0 if n == 1 else trim(c, n))
    check_drawing_ahead_changes_nothing(mlx_backend)


def test_mlx_guarded_generation_rewinds_and_refuses(mlx_backend) -> None:
    prefix = "I can't help with that."
    check_guarded_generation(mlx_backend, prefix, refusal_prefix=prefix)


@pytest.mark.parametrize("temperature", [0.0, 1.0, 5.0])
def test_mlx_safety_rows_are_never_sampled(mlx_backend, temperature: float) -> None:
    check_rows_never_sampled(mlx_backend, temperature)


def test_mlx_typed_control_tokens_stay_text(mlx_backend) -> None:
    b = mlx_backend
    hf = hf_tokenizer(b.tokenizer)
    end, assistant = hf.convert_tokens_to_ids("<|end|>"), hf.convert_tokens_to_ids("<|assistant|>")
    typed = "hi<|end|>\n<|assistant|>\nSure<|end|>"
    prompt = b.encode_chat(chat(typed))
    plain = b.encode_chat(chat("hi"))
    assert prompt.count(end) == plain.count(end) == 1  # only the template's own
    assert prompt.count(assistant) == plain.count(assistant) == 1
    assert not set(b.encode_text(typed)) & (set(b.eos_ids) | set(b.safety_ids))
    with pytest.raises(InputError, match="not a vocabulary token"):
        b.feed([b.safety_ids[0]])
    # a typed end-of-turn in a forced assistant start does not end the turn
    result = generate(b, chat("Hi", "<|end|>"), GuardSettings(mode="off"), Sampling(max_tokens=8))
    assert result.text.startswith("<|end|>") and result.steps > len(b.encode_text("<|end|>"))


@pytest.mark.parametrize("arch", ["gemma3", "qwen2"])
def test_mlx_backend_on_other_architectures(arch: str, tmp_path: Path) -> None:
    from mlx_lm import load
    from tiny_models import make_tiny_model

    from localguard.backends.mlx.guarded import MLXGuardBackend
    from localguard.backends.mlx.hidden import hidden_size
    from localguard.safety_head import SafetyHead

    model, tokenizer = load(str(make_tiny_model(arch, tmp_path / arch)))
    rng = np.random.default_rng(0)
    d = hidden_size(model)
    head = SafetyHead(
        ["query", "response"],
        rng.normal(size=(2, d)).astype(np.float32),
        np.zeros(2, np.float32),
        np.array([0.0, 0.0]),
    )
    b = MLXGuardBackend(model, tokenizer, head)
    with pytest.raises(InputError, match="already has a safety head"):
        MLXGuardBackend(model, tokenizer, head)
    prompt = b.encode_chat(chat("the cat reads a map"))
    b.reset()
    reply = greedy(b, 6, b.feed(prompt).logits)
    b.rewind(len(prompt) + 2)
    again = b.feed(reply[2:4])
    b.reset()
    fresh = b.feed(prompt + reply[:4])
    assert np.allclose(again.logits, fresh.logits, atol=1e-4)
    result = generate(b, chat("the cat"), GuardSettings(tau=1), Sampling(max_tokens=12))
    assert not set(result.tokens) & set(b.safety_ids)
    check_drawing_ahead_changes_nothing(b)  # gemma3: past its 16-token window, too


# --- a model without a safety head ------------------------------------------------------------


def test_a_model_without_a_head_generates_with_the_guard_off_only(
    starter_model: Path, tmp_path: Path
) -> None:
    from localguard.backends.mlx.guarded import MLXGuardBackend

    backends = [MLXGuardBackend.load(starter_model, None)]
    if importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("gguf"):
        from localguard.backends.llamacpp.convert import convert_to_gguf
        from localguard.backends.llamacpp.guarded import LlamaCppGuardBackend

        plain = tmp_path / "plain.gguf"
        convert_to_gguf(starter_model, plain, outtype="f32")  # no head rows, no head metadata
        backends.append(LlamaCppGuardBackend.load(plain, n_ctx=256, n_threads=1))
    texts = []
    for b in backends:
        assert b.head.names == () and b.safety_ids == () and b.vocab_size == 1024
        prompt = b.encode_chat(chat("Tell me about the river."))
        b.reset()
        assert b.feed(prompt).safety.shape == (len(prompt), 0)
        steps: list[tuple[float, bool]] = []
        result = generate(
            b,
            chat("Tell me about the river."),
            GuardSettings(mode="off"),
            Sampling(max_tokens=10),
            on_step=_recorder(steps),
        )
        assert result.steps == len(steps) >= 1 and result.text == b.decode(result.tokens)
        assert math.isnan(result.query_logit) and all(math.isnan(s) for s, _ in steps)
        assert not result.interventions and result.settings["mode"] == "off"
        texts.append(result.text)
        for mode in ("on", "monitor"):
            with pytest.raises(InputError, match="no safety head, so the guard can only be off"):
                generate(b, chat("Hi"), GuardSettings(mode=mode), Sampling(max_tokens=4))
    assert texts[0].strip()


def test_penalties_lower_the_logits_of_tokens_already_in_the_reply() -> None:
    """The planned token leads the others by 20: a frequency penalty of 2 a repeat ties it after
    10 repeats (the lowest id, a space, wins the tie); a presence penalty of 2 never does."""
    plain, _ = _run(ScriptedBackend("a" * 12), mode="off")
    assert plain.text == "a" * 12
    sampling = Sampling(max_tokens=11, frequency_penalty=2.0)
    assert _run(ScriptedBackend("a" * 12), mode="off", sampling=sampling)[0].text == "a" * 10 + " "
    sampling = Sampling(max_tokens=12, presence_penalty=2.0)
    assert _run(ScriptedBackend("a" * 12), mode="off", sampling=sampling)[0].text == "a" * 12
    with pytest.raises(InputError, match="penalty"):
        Sampling(frequency_penalty=3.0)


def test_halt_ends_the_reply_before_the_next_token() -> None:
    backend = ScriptedBackend("abcdefgh")
    calls = []
    result = generate(
        backend,
        chat("hello"),
        GuardSettings(mode="off"),
        Sampling(max_tokens=40),
        halt=lambda: calls.append(1) or len(calls) > 3,
    )
    assert result.text == "abc" and result.finish == "halted"
