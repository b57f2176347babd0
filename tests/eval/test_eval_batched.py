"""Targets without a safety head are decoded REPLY_BATCH cases at a time on llama.cpp: the same
records as one case after another through the guard (tiny F32 model, where batching does not
change the rounding), and a killed run decodes the batch of its first missing case whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import small_options

from localguard.backends.llamacpp.convert import convert_to_gguf
from localguard.backends.llamacpp.guarded import LlamaCppGuardBackend
from localguard.eval import stage
from localguard.eval.options import Target

SUITES = ["direct", "prefill", "decoding", "over_refusal"]
KEPT = ("target", "suite", "attack", "prompt_id", "prefill", "output", "finish", "sampling")


@pytest.fixture(scope="module")
def plain_gguf(starter_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The starter model as a GGUF without a head: what a raw model's export is."""
    path = tmp_path_factory.mktemp("batched") / "plain.gguf"
    convert_to_gguf(starter_model, path, outtype="f32")
    return path


def run(tmp_path: Path, data: Path, gguf: Path) -> list[dict]:
    targets = [Target("plain", "llamacpp", str(gguf))]
    opts = small_options(
        tmp_path, data, targets, suites=SUITES, max_prompts=3, prefill_tokens=[2, 7]
    )
    stage.evaluate(opts)
    lines = (tmp_path / "eval" / "results.jsonl").read_text().splitlines()
    return [{k: r[k] for k in KEPT} for r in map(json.loads, lines)]


def counted_replies(monkeypatch) -> list[int]:
    """The batch sizes the stage asks llama.cpp for."""
    sizes: list[int] = []
    real = LlamaCppGuardBackend.replies

    def replies(self, prompts, samplings, ended=None):
        sizes.append(len(prompts))
        return real(self, prompts, samplings, ended)

    monkeypatch.setattr(LlamaCppGuardBackend, "replies", replies)
    return sizes


def test_batched_records_are_the_guard_off_records(
    tmp_path: Path, data: Path, plain_gguf: Path, monkeypatch
) -> None:
    sizes = counted_replies(monkeypatch)
    batched = run(tmp_path / "batched", data, plain_gguf)
    assert sizes and max(sizes) == stage.REPLY_BATCH and sum(sizes) == len(batched)
    monkeypatch.setattr(LlamaCppGuardBackend, "batches_replies", False)
    sizes.clear()
    one_by_one = run(tmp_path / "one", data, plain_gguf)
    assert not sizes and one_by_one == batched
    assert {r["finish"] for r in batched} <= {"eos", "length"}
    short = [r for r in batched if r["attack"] == "prefill k=2"]
    assert short and all(r["output"].startswith(r["prefill"]) for r in short)
    cut = [r for r in batched if r["attack"] == "prefill k=7"]  # past max_tokens (6): cut
    assert cut and all(r["prefill"].startswith(r["output"]) for r in cut)
    assert {r["finish"] for r in cut} == {"length"}


def test_a_killed_run_decodes_the_batch_of_its_first_missing_case_again(
    tmp_path: Path, data: Path, plain_gguf: Path, monkeypatch
) -> None:
    monkeypatch.setattr(stage, "REPLY_BATCH", 3)
    whole = run(tmp_path / "whole", data, plain_gguf)
    written = []
    real = stage.write_verdicts

    def killed(*args, **kwargs):
        if len(written) == 7:  # a kill after the first case of the third batch
            raise KeyboardInterrupt
        written.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "write_verdicts", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", data, plain_gguf)
    partial = tmp_path / "killed" / "eval.partial" / stage.PARTIAL_RESULTS
    assert len(partial.read_text().splitlines()) == 7  # one judge
    monkeypatch.setattr(stage, "write_verdicts", real)
    sizes = counted_replies(monkeypatch)
    assert run(tmp_path / "killed", data, plain_gguf) == whole
    assert sizes[0] == 3 and sum(sizes) == len(whole) - 6  # the third batch whole, again
