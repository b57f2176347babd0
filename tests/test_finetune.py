"""localguard finetune: the adaptive loss, data order, resume after SIGKILL, outputs, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten

from localguard.backends.mlx import lora_train as lt
from localguard.cli import cli
from localguard.finetune import FinetuneOptions
from localguard.recipe import SCHEMA
from localguard.runs import partial_dir


@pytest.fixture(scope="module")
def world(starter_model: Path) -> dict:
    data = starter_model.parent / "data"
    return {"model": starter_model, "train": data / "attack_10.jsonl", "data": data}


def _args(world: dict, out: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        "--model",
        str(world["model"]),
        "--data",
        str(world["train"]),
        "--out",
        str(out),
        "--max-seq-length",
        "128",
        "--batch-size",
        "4",
        "--lora-rank",
        "4",
        "--learning-rate",
        "1e-3",
        "--steps-per-eval",
        "0",
        *extra,
    ]


def _run(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


# --- the loss ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapted(world: dict):
    model, tokenizer = lt.load(world["model"])
    tokens = mx.array([tokenizer.encode("hello there, how are you today?")])
    base = model(tokens)
    lt.add_adapters(model, lt.LoraSpec(rank=4, scale=1.0))
    return model, tokens, base


def test_adapters_off_is_the_base_model(adapted) -> None:
    model, tokens, base = adapted
    modules = lt.adapter_modules(model)
    assert modules
    for _, module, _ in modules:
        module.lora_b = mx.random.normal(module.lora_b.shape) * 0.1
    try:
        assert mx.abs(model(tokens) - base).max().item() > 1e-3
        with lt.adapters_off(model):
            assert mx.abs(model(tokens) - base).max().item() == 0.0
        assert mx.abs(model(tokens) - base).max().item() > 1e-3
    finally:
        for _, module, _ in modules:
            module.lora_b = mx.zeros(module.lora_b.shape)


def _batch(rows: list[list[int]], offsets: list[int], beta, width: int) -> lt.Batch:
    tokens = np.zeros((len(rows), width), np.int32)
    for k, row in enumerate(rows):
        tokens[k, : len(row)] = row
    beta = np.broadcast_to(np.asarray(beta, np.float32), (len(rows),))
    ref_rows, ref_weight = lt.reference_rows(beta)
    spans = [(first, len(row)) for first, row in zip(offsets, rows, strict=True)]
    targets, target_weights = lt.target_states(spans, width - 1)
    return lt.Batch(
        mx.array(tokens),
        mx.array(offsets),
        mx.array([len(r) for r in rows]),
        mx.array(1 - beta),
        mx.array(ref_rows),
        mx.array(ref_weight),
        mx.array(targets),
        mx.array(target_weights),
    )


def _with_reference(model, batch: lt.Batch):
    return lt.adaptive_loss(model, batch, lt.reference(model, batch))


def test_loss_ignores_padding_and_prompt(adapted) -> None:
    model, _, _ = adapted
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]
    narrow = lt.adaptive_loss(model, _batch(rows, [3, 2], 0.0, 8), None)
    wide = lt.adaptive_loss(model, _batch(rows, [3, 2], 0.0, 32), None)
    assert narrow[1].item() == wide[1].item() == (6 - 3) + (4 - 2)
    assert abs(narrow[0].item() - wide[0].item()) < 1e-5


def test_the_nll_and_its_gradients_are_those_of_the_whole_batchs_logits(adapted) -> None:
    """The output layer runs at the target states alone (lora_train.target_states); the loss and
    its gradients are what every position's logits, masked, give."""
    model, _, _ = adapted
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]
    batch = _batch(rows, [3, 2], 0.0, 8)
    assert batch.targets.size % lt.TARGET_PAD == 0 and batch.target_weights.sum().item() == 5
    modules = lt.adapter_modules(model)
    for n, (_, module, _) in enumerate(modules):
        module.lora_b = mx.random.normal(module.lora_b.shape, key=mx.random.key(n)) * 0.05

    def everywhere(model) -> mx.array:
        logp = nn.log_softmax(model(batch.tokens[:, :-1]).astype(mx.float32), axis=-1)
        nll = -mx.take_along_axis(logp, batch.tokens[:, 1:, None], axis=-1).squeeze(-1)
        j = mx.arange(1, 8)[None, :]
        mask = ((j >= batch.offsets[:, None]) & (j < batch.lengths[:, None])).astype(mx.float32)
        return ((nll * mask).sum(axis=1) / mask.sum(axis=1)).mean()

    try:
        found = [
            nn.value_and_grad(model, loss)(model)
            for loss in (lambda m: lt.adaptive_loss(m, batch, None)[0], everywhere)
        ]
        (loss_a, grads_a), (loss_b, grads_b) = found
        assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-5)
        grads_b = dict(tree_flatten(grads_b))
        for name, g in tree_flatten(grads_a):
            assert mx.abs(g - grads_b[name]).max().item() <= 1e-4 * mx.abs(g).max().item() + 1e-7
    finally:
        for _, module, _ in modules:
            module.lora_b = mx.zeros(module.lora_b.shape)


def test_kl_is_zero_without_adapter_change_and_weights_apply(adapted) -> None:
    model, _, _ = adapted
    rows = [[5, 6, 7, 8, 9, 10]]
    loss, _, nll, kl = _with_reference(model, _batch(rows, [2], 0.5, 8))
    assert abs(kl.item()) < 1e-5  # lora_b starts at zero: the model is its reference (float32)
    assert abs(loss.item() - 0.5 * nll.item()) < 1e-5


def test_kl_matches_the_definition(adapted) -> None:
    model, _, _ = adapted
    rows = [[5, 6, 7, 8, 9, 10]]
    batch = _batch(rows, [2], 1.0, 8)
    modules = lt.adapter_modules(model)
    for _, module, _ in modules:
        module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    try:
        _, _, _, kl = _with_reference(model, batch)
        inputs = batch.tokens[:, :-1]
        logq = nn.log_softmax(model(inputs).astype(mx.float32), axis=-1)
        with lt.adapters_off(model):
            logp = nn.log_softmax(model(inputs).astype(mx.float32), axis=-1)
        per_token = (mx.exp(logp) * (logp - logq)).sum(axis=-1)[0, 1:5]  # targets 2..5
        # the loss's form (no full log-softmax of the policy) cancels large float32 terms
        assert kl.item() == pytest.approx(per_token.mean().item(), rel=5e-3, abs=1e-6)
        assert kl.item() > 1e-4
    finally:
        for _, module, _ in modules:
            module.lora_b = mx.zeros(module.lora_b.shape)


def test_kl_of_sampled_rows_counts_only_those_rows(adapted) -> None:
    model, _, _ = adapted
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]
    modules = lt.adapter_modules(model)
    for n, (_, module, _) in enumerate(modules):  # seeded: not whatever earlier tests drew
        module.lora_b = mx.random.normal(module.lora_b.shape, key=mx.random.key(n)) * 0.05
    try:
        both = _with_reference(model, _batch(rows, [2, 2], [0.0, 0.5], 8))
        alone = _with_reference(model, _batch(rows[1:], [2], 0.5, 8))
        # row 2's KL only (counting row 1's too would move it by far more than float32's
        # batched-against-alone difference, about 1e-4 here)
        assert both[3].item() == pytest.approx(alone[3].item(), rel=1e-3)
        nll_first = lt.adaptive_loss(model, _batch(rows[:1], [2], 0.0, 8), None)[0]
        expected = (nll_first.item() + alone[0].item()) / 2  # the loss is a mean over rows
        assert both[0].item() == pytest.approx(expected, rel=1e-3)
    finally:
        for _, module, _ in modules:
            module.lora_b = mx.zeros(module.lora_b.shape)


def test_padded_reference_rows_are_copies_with_no_weight(adapted) -> None:
    model, _, _ = adapted
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22]]
    modules = lt.adapter_modules(model)
    for _, module, _ in modules:
        module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    try:
        batch = _batch(rows, [2, 2, 1, 1], [0.5, 0.5, 0.5, 0.0], 8)
        assert batch.ref_rows.tolist() == [0, 1, 2, 0]  # three rows, padded to four
        ref = lt.reference(model, batch)
        assert ref.neg_entropy.shape[0] == 4
        assert mx.array_equal(ref.neg_entropy[3], ref.neg_entropy[0]).item()
        alone = [_with_reference(model, _batch([r], [o], 0.5, 8))[3].item()
                 for r, o in zip(rows[:3], [2, 2, 1], strict=True)]  # fmt: skip
        assert lt.adaptive_loss(model, batch, ref)[3].item() == pytest.approx(sum(alone), rel=1e-4)
    finally:
        for _, module, _ in modules:
            module.lora_b = mx.zeros(module.lora_b.shape)


def test_kl_through_the_head_average_matches_the_second_head_pass(adapted, monkeypatch) -> None:
    """A frozen head's KL (h . sum_v p_v w_v) gives the loss and gradients that the full
    vocabulary pass (the adapted-head path) gives."""
    model, _, _ = adapted
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]
    batch = _batch(rows, [2, 1], [0.7, 0.3], 8)
    modules = lt.adapter_modules(model)
    for _, module, _ in modules:
        module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    try:
        assert lt.head_is_frozen(model)
        grad = nn.value_and_grad(model, lt.adaptive_loss)
        found = []
        for frozen in (True, False):
            monkeypatch.setattr(lt, "head_is_frozen", lambda _model, f=frozen: f)
            ref = lt.reference(model, batch)
            assert (ref.probs is None) == frozen
            (loss, _, _, kl), grads = grad(model, batch, ref)
            found.append((loss.item(), kl.item(), dict(tree_flatten(grads))))
        (loss_a, kl_a, grads_a), (loss_b, kl_b, grads_b) = found
        assert kl_a > 1e-4
        assert kl_a == pytest.approx(kl_b, rel=2e-3, abs=1e-6)
        assert loss_a == pytest.approx(loss_b, rel=1e-5)
        for name, g in grads_a.items():
            assert mx.abs(g - grads_b[name]).max().item() <= 1e-3 * mx.abs(g).max().item() + 1e-7
    finally:
        for _, module, _ in modules:
            module.lora_b = mx.zeros(module.lora_b.shape)


def test_an_adapted_head_is_not_frozen(world: dict) -> None:
    model, _ = lt.load(world["model"])
    lt.add_adapters(model, lt.LoraSpec(rank=4, keys=["self_attn.q_proj", "lm_head"]))
    tied = "lm_head" not in model
    assert lt.head_is_frozen(model) == tied  # a tied head is the embedding, not adapted here
    if tied:
        model, _ = lt.load(world["model"])
        lt.add_adapters(model, lt.LoraSpec(rank=4, keys=["self_attn.q_proj", "model.embed_tokens"]))
        assert not lt.head_is_frozen(model)


def test_reference_rows_pad_to_a_power_of_two_with_weight_zero() -> None:
    rows, weights = lt.reference_rows(np.array([0, 0.5, 0, 0.2, 0.9, 0, 0, 0], np.float32))
    assert rows.tolist() == [1, 3, 4, 1] and np.allclose(weights, [0.5, 0.2, 0.9, 0])
    rows, _ = lt.reference_rows(np.array([0.1] * 6, np.float32))
    assert len(rows) == 6  # never more than the batch


def test_sampled_kl_weights_are_unbiased() -> None:
    beta = np.array([0.0, 0.04, 0.2, 0.5, 0.9], np.float32)
    exact = lt.Weighting(sample_below=0.0).kl_weights(beta, np.random.default_rng(0))
    assert np.array_equal(exact, beta)
    sampled = lt.Weighting(sample_below=0.5)
    draws = np.stack([sampled.kl_weights(beta, np.random.default_rng(k)) for k in range(20000)])
    assert np.allclose(draws.mean(axis=0), beta, atol=0.01)
    assert (draws[:, 0] == 0).all() and (draws[:, 3:] == beta[3:]).all()  # risky rows always
    assert set(np.unique(draws[:, 1])) == {0.0, 0.5}
    assert (draws[:, 1] > 0).mean() == pytest.approx(0.08, abs=0.01)


def test_weighting() -> None:
    risk = np.array([0.0, 0.5, 1.0])
    alpha, beta = lt.Weighting(0.1, 0.9).weights(risk, None)
    assert np.allclose(beta, [0.1, 0.5, 0.9]) and np.allclose(alpha, [0.9, 0.5, 0.1])
    alpha, _ = lt.Weighting(0.1, 0.9, alpha_one=True).weights(risk, None)
    assert np.allclose(alpha, 1.0)
    ema = lt.Weighting(0.0, 1.0, ema=0.5)
    running = ema.update(None, risk)
    assert running == pytest.approx(0.5)
    _, beta = ema.weights(np.array([1.0]), running)
    assert beta[0] == pytest.approx(0.75)


def test_batch_order_is_a_fresh_permutation_per_epoch_grouped_by_length() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 100, 64)
    first = np.concatenate([lt.batch_indices(lengths, 8, i, 0) for i in range(8)])
    second = np.concatenate([lt.batch_indices(lengths, 8, i, 0) for i in range(8, 16)])
    assert sorted(first) == list(range(64)) and sorted(second) == list(range(64))
    assert not np.array_equal(first, second)
    assert np.array_equal(lt.batch_indices(lengths, 8, 3, 0), first[24:32])
    spread = [np.ptp(lengths[first[i : i + 8]]) for i in range(0, 64, 8)]
    assert np.mean(spread) < 0.5 * np.ptp(lengths)  # batches hold similar lengths
    odd = np.concatenate([lt.batch_indices(lengths[:10], 4, i, 0) for i in range(5)])
    assert sorted(odd) == sorted(list(range(10)) * 2)  # batches run on across epochs


def test_cli_options_follow_the_recipe_schema() -> None:
    defaults = FinetuneOptions(Path("m"), Path("d"), Path("o"))
    for key, field in SCHEMA["finetune"].items():
        if hasattr(defaults, key):
            assert getattr(defaults, key) == field.default, key


# --- runs ----------------------------------------------------------------------------------


def test_finetune_writes_an_mlx_lm_adapter(world: dict, tmp_path: Path) -> None:
    from mlx_lm import generate, load

    out = tmp_path / "adapter"
    result = _run(_args(world, out, "--risk", "constant", "--iters", "6", "--steps-per-eval", "3"))
    assert result.exit_code == 0, result.output
    assert not partial_dir(out).exists()
    assert {"adapters.safetensors", "adapter_config.json", "manifest.json", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for key in ("loss", "nll", "kl", "beta", "risk", "tokens_per_second", "peak_memory_gb"):
        assert np.isfinite(rows[-1][key]), key
    assert rows[-1]["beta"] == 0.5 and "val_nll" in rows[2]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 6 and manifest["risk"]["estimator"] == "constant"
    model, tokenizer = load(str(world["model"]), adapter_path=str(out))
    assert isinstance(generate(model, tokenizer, "hi", max_tokens=3), str)


def test_progress_counts_each_steps_trained_tokens(world: dict, tmp_path: Path) -> None:
    from localguard.data import load_dataset

    model, tokenizer = lt.load(world["model"])
    samples = load_dataset(world["train"], tokenizer, 64).samples[:12]
    lt.add_adapters(model, lt.LoraSpec(rank=2))
    spec = lt.TrainSpec(iters=4, batch_size=4, max_seq_length=64)
    seen: list[dict] = []
    lt.train(model, samples, np.zeros(len(samples)), lt.Weighting(), spec, tmp_path,
             progress=lambda _step, m: seen.append(m))  # fmt: skip
    lengths = np.array([len(s.tokens) for s in samples])
    assert len(seen) == 4
    for step, m in enumerate(seen, 1):
        rows = lt.batch_indices(lengths, 4, step - 1, spec.seed)
        assert m["tokens"] == sum(lengths[i] - max(samples[i].offset, 1) for i in rows)
        assert m["tokens_per_second"] == pytest.approx(m["tokens"] / m["step_seconds"])


def _adapters(folder: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(folder / "adapters.safetensors")).items()}


def test_resume_after_sigkill_matches_an_uninterrupted_run(world: dict, tmp_path: Path) -> None:
    common = ["--risk", "constant", "--iters", "40", "--steps-per-save", "4", "--seed", "3"]
    whole = tmp_path / "whole"
    assert _run(_args(world, whole, *common)).exit_code == 0

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "localguard", *_args(world, out, *common)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = partial_dir(out) / lt.CHECKPOINT / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 8:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed"
    assert lt.resume_step(partial_dir(out)) >= 8

    refused = _run(_args(world, out, *common))
    assert refused.exit_code == 2 and "--resume" in refused.output
    resumed = _run([*_args(world, out, *common), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    a, b = _adapters(whole), _adapters(out)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))


# --- bad input -----------------------------------------------------------------------------


def test_malformed_data_exits_2_and_writes_nothing(world: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{not json\n')
    args = _args(world, tmp_path / "out2", "--risk", "none", "--iters", "2")
    args[args.index("--data") + 1] = str(bad)
    result = _run(args)
    assert result.exit_code == 2
    assert "bad.jsonl:" in result.output
    assert not (tmp_path / "out2").exists() and not partial_dir(tmp_path / "out2").exists()


def test_existing_output_and_missing_estimator_are_errors(world: dict, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    result = _run(_args(world, out, "--risk", "none", "--iters", "2"))
    assert result.exit_code == 2 and "--force" in result.output
    result = _run(_args(world, tmp_path / "x", "--risk", "probe", "--iters", "2"))
    assert result.exit_code == 2 and "--probe" in result.output
    result = _run(_args(world, tmp_path / "y", "--risk", "critic", "--iters", "2"))
    assert result.exit_code == 2 and "--critic" in result.output


def test_anchors_are_refusals_and_benign_answers_drawn_by_seed_to_the_ratio(world: dict) -> None:
    from localguard.finetune import anchor_samples

    safety = world["data"] / "safety_conversations.jsonl"
    replies: dict[int, set[str]] = {0: set(), 1: set()}
    for line in safety.read_text().splitlines():
        row = json.loads(line)
        if row.get("response_label", row.get("label")) == 0:
            query = row.get("query_label", row.get("label"))
            replies[query].add(row["messages"][-1]["content"].strip())
    _, tokenizer = lt.load(world["model"])
    opts = FinetuneOptions(
        world["model"], world["train"], Path("o"), anchors=safety, anchor_ratio=0.2
    )
    first = anchor_samples(opts, tokenizer, 40)
    assert [s.label for s in first] == [1] * 5 + [0] * 5  # 0.2 of 50 rows, half each
    for s in first:
        reply = tokenizer.decode(s.tokens[s.offset :])
        assert 1 <= s.offset < len(s.tokens) and any(r in reply for r in replies[s.label])
    assert [s.tokens for s in anchor_samples(opts, tokenizer, 40)] == [s.tokens for s in first]
    opts.seed = 1
    assert [s.tokens for s in anchor_samples(opts, tokenizer, 40)] != [s.tokens for s in first]


def test_anchors_train_at_risk_one_beside_the_estimated_rows(
    world: dict, tmp_path: Path, monkeypatch
) -> None:
    from localguard import finetune as ft

    seen = {}

    def capture(model, samples, risks, *args, **kwargs):
        seen.update(samples=samples, risks=risks)
        return 0

    monkeypatch.setattr(lt, "train", capture)
    monkeypatch.setattr(ft, "estimate_risk", lambda o, m, s: (np.full(len(s), 0.25), {}))
    safety = world["data"] / "safety_conversations.jsonl"
    out = tmp_path / "anchored"
    opts = FinetuneOptions(
        world["model"],
        world["train"],
        out,
        risk="constant",
        anchors=safety,
        anchor_ratio=0.2,
        max_seq_length=128,
        iters=1,
    )
    ft.finetune(opts)
    manifest = json.loads((out / "manifest.json").read_text())
    n, k = manifest["examples"], manifest["anchor_rows"]
    assert k == round(n / 4) and manifest["data"]["anchors"] == str(safety)
    assert list(seen["risks"]) == [0.25] * n + [1.0] * k and len(seen["samples"]) == n + k


def test_anchor_options_are_checked_before_any_model_work(world: dict, tmp_path: Path) -> None:
    safety = str(world["data"] / "safety_conversations.jsonl")
    for extra, words in [
        (["--risk", "constant", "--anchors", safety], "--anchor-ratio"),
        (["--risk", "constant", "--anchor-ratio", "0.2"], "--anchors"),
        (["--risk", "none", "--anchors", safety, "--anchor-ratio", "0.2"], "--risk none"),
    ]:
        result = _run(_args(world, tmp_path / "out", "--iters", "2", *extra))
        assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_two_ranks_match_one_process(world: dict, tmp_path: Path) -> None:
    """mlx.launch -n 2 --backend ring: data sharded by rank, gradients averaged, rank 0 writes.

    Same global batch as a single process, so the adapters agree up to float summation order,
    which Adam's normalization of tiny gradients amplifies: within rtol 1e-2, atol 2e-4 (values
    are about 1e-2).
    """
    launcher = Path(sys.executable).with_name("mlx.launch")
    if not launcher.exists():
        pytest.skip("mlx.launch is not installed")
    common = ["--risk", "constant", "--iters", "6", "--steps-per-save", "100"]
    single = tmp_path / "single"
    assert _run(_args(world, single, *common)).exit_code == 0
    double = tmp_path / "double"
    command = [
        str(launcher),
        "-n",
        "2",
        "--backend",
        "ring",
        "--",
        sys.executable,
        "-m",
        "localguard",
        *_args(world, double, *common),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _adapters(single), _adapters(double)
    for key in a:
        # Adam turns summation-order differences in tiny gradients into the odd element just
        # past any tolerance; a wrong split of the batch moves nearly all of them.
        close = np.isclose(a[key], b[key], rtol=1e-2, atol=2e-4)
        assert close.mean() >= 0.99, (key, np.abs(a[key] - b[key]).max())
    one = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (double / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(one, two, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-3)


def test_probe_for_another_model_is_refused(world: dict, tmp_path: Path) -> None:
    from tiny_models import make_tiny_model

    from localguard.backends.mlx.probe_train import train_probe

    other = make_tiny_model("llama", tmp_path / "other")
    prompts = [[5, 6, 7 + i % 2] for i in range(20)]
    train_probe(other, prompts, [i % 2 for i in range(20)], tmp_path / "probe")
    out = tmp_path / "out"
    result = _run(
        _args(world, out, "--risk", "probe", "--probe", str(tmp_path / "probe"), "--iters", "2")
    )
    assert result.exit_code == 2 and "trained for another model" in result.output
    assert not out.exists() and not partial_dir(out).exists()


def test_long_samples_are_truncated_with_a_warning(world: dict, tmp_path: Path) -> None:
    from localguard.backends.mlx.scratch import load_tokenizer
    from localguard.data import load_dataset

    data = load_dataset(world["train"], load_tokenizer(world["model"]), max_length=10**6)
    limit = max(s.offset for s in data.samples) + 4  # room for every prompt, not for every reply
    args = _args(world, tmp_path / "out", "--risk", "none", "--iters", "2")
    args[args.index("--max-seq-length") + 1] = str(limit)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"samples longer than {limit} tokens were truncated" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["truncated"] > 0


def test_recipe_runs_probe_finetune_and_head_stages(world: dict, tmp_path: Path) -> None:
    from mlx_lm import load

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[run]\nout = "run"\n[model]\npath = "starter:test"\n'
        '[data]\ntrain = "starter:attack_10"\nvalid = "starter:newskill_valid"\n'
        "max_seq_length = 128\n"
        '[finetune]\nrisk = "probe"\nbaselines = ["none"]\niters = 2\nbatch_size = 4\n'
        "steps_per_eval = 0\n"
        "[head]\niters = 2\nbatch_size = 2\nmax_seq_length = 96\n"
        "[export]\nenabled = false\n[eval]\nenabled = false\n"
    )
    result = _run(["run", str(recipe)])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    names = [s["name"] for s in run["stages"]]
    assert names == ["starter", "probe", "finetune", "finetune", "head"]
    assert (tmp_path / "run" / "adapter-probe" / "adapters.safetensors").is_file()
    head = tmp_path / "run" / "head"
    info = json.loads((head / "head.json").read_text())
    assert info["manifest"]["base_adapter"].endswith("adapter-probe")  # continues that adapter
    load(str(world["model"]), adapter_path=str(head))
    again = _run(["run", str(recipe)])  # unchanged settings and inputs: every stage skipped
    assert again.exit_code == 0 and again.output.count("reusing the last result") == 5
    stamp = (head / "head.json").stat().st_mtime_ns
    changed = _run(["run", str(recipe), "--set", "head.gamma=0.2"])  # only the head reruns
    assert changed.exit_code == 0 and changed.output.count("reusing the last result") == 4
    assert (head / "head.json").stat().st_mtime_ns != stamp
    tail = _run(["run", str(recipe), "--set", "head.gamma=0.2", "--from", "finetune"])
    assert tail.exit_code == 0 and tail.output.count("reusing the last result") == 2
    bad = _run(["run", str(recipe), "--from", "eval"])
    assert bad.exit_code == 2 and "--from eval: not a stage of this plan" in bad.output


def test_dora_accumulation_checkpointing_and_a_quantized_base(world: dict, tmp_path: Path) -> None:
    """DoRA with gradient accumulation and checkpointing, and QLoRA on a 4-bit MLX model."""
    from mlx_lm import convert, load

    out = tmp_path / "dora"
    extra = [
        "--dora",
        "--grad-accumulation",
        "2",
        "--grad-checkpoint",
        "--lr-schedule",
        "cosine",
        "--warmup-steps",
        "1",
        "--optimizer",
        "adamw",
    ]
    result = _run(_args(world, out, "--risk", "constant", "--iters", "3", *extra))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "adapter_config.json").read_text())["fine_tune_type"] == "dora"
    load(str(world["model"]), adapter_path=str(out))

    quantized = tmp_path / "q4"
    convert(str(world["model"]), str(quantized), quantize=True, q_group_size=64, q_bits=4)
    out = tmp_path / "qlora"
    args = _args(world, out, "--risk", "constant", "--iters", "3")
    args[args.index("--model") + 1] = str(quantized)
    result = _run(args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["kl"]) for r in rows)
    load(str(quantized), adapter_path=str(out))
