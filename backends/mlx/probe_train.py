"""Train the activation risk probe for a local model: features with MLX, fit with numpy.

Kept apart from localguard/probe.py so the fitting, scoring and file code never needs MLX.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import click

from localguard import probe as probe_lib
from localguard.backends.mlx import hidden
from localguard.errors import InputError
from localguard.fingerprint import model_fingerprint
from localguard.recipe import default

BATCH_SIZE = 16
PROGRESS_MIN_BATCHES = 4  # below this the bar is noise


def _check_examples(prompts_tokens: Sequence[list[int]], labels: Sequence[int]) -> None:
    """Catch unusable training data before the model is loaded."""
    if len(prompts_tokens) != len(labels):
        raise InputError(f"{len(prompts_tokens)} prompts but {len(labels)} labels")
    odd = sorted({label for label in labels if label not in (0, 1)})
    if odd:
        raise InputError(f"labels must be 0 (benign) or 1 (harmful), got {odd[:5]}")
    counts = [sum(1 for label in labels if label == cls) for cls in (0, 1)]
    if min(counts) < 2:
        raise InputError(
            f"probe training needs at least 2 examples of each label, got {counts[0]} benign "
            f"(0) and {counts[1]} harmful (1)"
        )


@contextlib.contextmanager
def _progress(n_prompts: int, batch_size: int) -> Iterator:
    """A click progress bar on stderr counting prompts, or None when there are few batches."""
    if -(-n_prompts // batch_size) < PROGRESS_MIN_BATCHES:
        yield None
        return
    with click.progressbar(
        length=n_prompts, label="probe features", file=sys.stderr, show_pos=True, width=24
    ) as bar:
        yield bar.update


def load_model(model_dir: Path):
    """The mlx-lm model in a local Hugging Face folder (the tokenizer is not needed here)."""
    from localguard.backends.mlx.loading import load_network

    model, _ = load_network(Path(model_dir))
    return model


def _manifest(model_dir: Path, layers: list[int], seed: int, n: int) -> dict:
    import mlx.core as mx
    import mlx_lm

    import localguard

    return {
        "command": "probe train",
        "model_path": str(Path(model_dir).resolve()),
        "model_fingerprint": model_fingerprint(model_dir),
        "layers": layers,
        "seed": seed,
        "n_examples": n,
        "versions": {
            "localguard": getattr(localguard, "__version__", "unknown"),
            "mlx": mx.__version__,
            "mlx_lm": mlx_lm.__version__,
        },
    }


def train_probe(
    model_dir: Path,
    prompts_tokens: list[list[int]],
    labels: list[int],
    out: Path,
    layers: Sequence[int] | None = None,
    seed: int = default("run", "seed"),
    batch_size: int = BATCH_SIZE,
    valid_fraction: float = default("probe", "valid_fraction"),
    l2: float | str = default("probe", "l2"),
    groups: Sequence[str] | None = None,
) -> dict:
    """Fit a calibrated probe on the model's prompt activations, save it to `out`.

    l2 is a penalty or "auto" (cross-validated on the training split); groups keep the rows of
    one prompt on one side of the validation split. Returns the validation metrics (auroc, f1,
    accuracy, n_train, n_valid, the l2 used, ...).
    """
    _check_examples(prompts_tokens, labels)
    model = load_model(model_dir)
    chosen = hidden.resolve_layers(layers, hidden.layer_count(model))
    with _progress(len(prompts_tokens), batch_size) as update:
        features = hidden.prompt_features(
            model, prompts_tokens, layers=chosen, batch_size=batch_size, progress=update
        )
    probe, metrics = probe_lib.fit_probe(
        features,
        labels,
        seed=seed,
        valid_fraction=valid_fraction,
        l2=l2,
        layers=chosen,
        groups=groups,
    )
    manifest = _manifest(model_dir, chosen, seed, len(labels))
    probe_lib.save_probe(probe, out, manifest)
    return metrics


def check_out(out: Path, force: bool) -> None:
    """OUT is new or empty, or (force) an older probe folder that may be replaced."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not force:
        raise InputError(f"{out} already exists; pass --force to replace it")
    if not (out / probe_lib.MANIFEST_FILE).is_file():
        raise InputError(f"{out}: exists and is not a probe folder; choose another output")


def train_probe_file(
    model_dir: Path,
    data: Path,
    out: Path,
    layers: Sequence[int] | None = None,
    max_length: int = 512,
    seed: int = default("run", "seed"),
    valid_fraction: float = default("probe", "valid_fraction"),
    l2: float | str = default("probe", "l2"),
    force: bool = False,
) -> dict:
    """`localguard probe train`: labeled prompts from a JSONL file, through train_probe.

    An existing non-empty `out` is an error unless force, which replaces an older probe
    folder (never another kind of folder); both are checked before any work."""
    from localguard.backends.mlx.loading import load_tokenizer
    from localguard.data import load_labeled_prompts

    check_out(Path(out), force)
    tokenizer = load_tokenizer(Path(model_dir))
    prompts, labels, groups = load_labeled_prompts(data, tokenizer, max_length)
    return train_probe(
        model_dir,
        prompts,
        labels,
        out,
        layers,
        seed,
        valid_fraction=valid_fraction,
        l2=l2,
        groups=groups,
    )
