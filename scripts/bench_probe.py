"""The risk probe's L2 penalty on held-out prompts: fixed values side by side with l2 = "auto".

Validation AUROC alone cannot choose the penalty: what the fine-tuning loop needs is a probe that
keeps benign prompts it never saw below 0.5 risk (above it, the adaptive KL holds those examples
back) and harmful ones above it. This script computes a world's prompt features once, fits the
probe exactly as `localguard probe train` does for every penalty given, and prints, per penalty,
the validation AUROC and F1, the fit time, and the share of each held-out set above 0.5 risk
(and its mean risk); for "auto" also the cross-validation scores over the grid.

Worlds:
  smollm2  SmolLM2-135M-Instruct on the public sets in LOCALGUARD_SHARED_DATA (or
           <repo>/../shared/data). Training: HarmBench val (Behavior) and JBB harmful (Goal) as
           1, the first --n-benign Alpaca instructions and JBB benign (goal) as 0. Held out:
           the next 200 Alpaca instructions and XSTest's safe prompts (0), AdvBench's first 100
           and StrongREJECT (1); a held-out prompt whose text is also a training prompt is
           dropped.
  starter  the starter world (built if needed). Training: safety_prompts. Held out: the
           fine-tuning mix attack_10 (its skill and new-skill rows, its borderline ones and its
           harmful ones), heldout_newskill, heldout_borderline (0) and heldout_harmful (1).

OUT/train.jsonl is the training set, for `localguard probe train --data OUT/train.jsonl`.

    python scripts/bench_probe.py --world smollm2 [--l2 0.1 1 10 100 auto] [--out DIR]
    python scripts/bench_probe.py --world starter [--size demo]
"""

from __future__ import annotations

from localguard.blas import reexec_with_fast_blas

reexec_with_fast_blas()  # before mlx loads: OpenBLAS makes MLX's CPU matmuls 20-50x faster

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from bench_finetune import shared_data  # scripts/ is on the path of a script run from it

from localguard.data import load_labeled_prompts, read_jsonl
from localguard.files import write_text
from localguard.probe import L2_AUTO, fit_probe
from localguard.recipe import default

HELDOUT_ALPACA = 200
HELDOUT_ADVBENCH = 100
Row = dict  # {"prompt": str, "label": 0 | 1} or a labeled chat {"messages": [...], "label": ...}


def _column(path: Path, name: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [row[name].strip() for row in csv.DictReader(handle) if row[name].strip()]


def _labeled(texts: list[str], label: int) -> list[Row]:
    return [{"prompt": t, "label": label} for t in texts]


def smollm2_sets(data: Path, n_benign: int) -> tuple[list[Row], dict[str, list[Row]]]:
    """Training rows and held-out sets from the public safety data."""
    alpaca = [
        row["instruction"] for row in json.loads((data / "alpaca_harmless_val.json").read_text())
    ]
    train = _labeled(_column(data / "harmbench_behaviors_text_val.csv", "Behavior"), 1)
    train += _labeled(_column(data / "jbb_harmful_behaviors.csv", "Goal"), 1)
    train += _labeled(alpaca[:n_benign], 0)
    train += _labeled(_column(data / "jbb_benign_behaviors.csv", "goal"), 0)
    with (data / "xstest_prompts.csv").open(newline="", encoding="utf-8") as handle:
        xstest = [row["prompt"] for row in csv.DictReader(handle) if row["label"] == "safe"]
    seen = {row["prompt"].lower() for row in train}
    heldout = {
        "alpaca_next": _labeled(alpaca[n_benign : n_benign + HELDOUT_ALPACA], 0),
        "xstest_safe": _labeled(xstest, 0),
        "advbench": _labeled(
            _column(data / "advbench_harmful_behaviors.csv", "goal")[:HELDOUT_ADVBENCH], 1
        ),
        "strongreject": _labeled(_column(data / "strongreject_dataset.csv", "forbidden_prompt"), 1),
    }
    heldout = {
        k: [r for r in rows if r["prompt"].lower() not in seen] for k, rows in heldout.items()
    }
    return train, heldout


def starter_sets(data: Path) -> tuple[list[Row], dict[str, list[Row]]]:
    """Training rows and held-out sets of a built starter world's data folder."""
    attack = read_jsonl(data / "attack_10.jsonl")
    heldout = {
        "attack10_skills": [r for r in attack if r["label"] == 0 and r["kind"] != "borderline"],
        "attack10_borderline": [r for r in attack if r["kind"] == "borderline"],
        "heldout_newskill": _labeled(
            [r["prompt"] for r in read_jsonl(data / "heldout_newskill.jsonl")], 0
        ),
        "heldout_borderline": _labeled(
            [r["prompt"] for r in read_jsonl(data / "heldout_borderline.jsonl")], 0
        ),
        "attack10_harmful": [r for r in attack if r["label"] == 1],
        "heldout_harmful": _labeled(
            [r["prompt"] for r in read_jsonl(data / "heldout_harmful.jsonl")], 1
        ),
    }
    return read_jsonl(data / "safety_prompts.jsonl"), heldout


def features(model_dir: Path, sets: dict[str, list[Row]], out: Path) -> dict[str, tuple]:
    """(features, labels) per set, tokenized and pooled as `localguard probe train` does."""
    from localguard.backends.mlx import hidden
    from localguard.backends.mlx.loading import load_tokenizer
    from localguard.backends.mlx.probe_train import load_model

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    layers = hidden.resolve_layers(None, hidden.layer_count(model))
    found = {}
    for name, rows in sets.items():
        path = out / f"{name}.jsonl"
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        tokens, labels, _ = load_labeled_prompts(path, tokenizer, default("data", "max_seq_length"))
        x = hidden.prompt_features(model, tokens, layers=layers, batch_size=16)
        found[name] = (x, np.asarray(labels))
    print(
        f"layers {layers}, {found['train'][0].shape[1]} features; prompts per set: "
        + ", ".join(f"{k} {len(v[1])}" for k, v in found.items())
    )
    return found


def _l2_value(text: str) -> float | str:
    return text if text == L2_AUTO else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=("smollm2", "starter"), required=True)
    parser.add_argument("--model", help="model (default: smollm2:135m or starter:SIZE)")
    parser.add_argument("--size", default="demo", help="starter world size")
    parser.add_argument("--n-benign", type=int, default=150, help="smollm2: Alpaca rows trained on")
    parser.add_argument("--l2", nargs="+", type=_l2_value, default=[0.1, 1.0, 10.0, 100.0, L2_AUTO])
    parser.add_argument("--seed", type=int, default=default("run", "seed"))
    parser.add_argument(
        "--out", type=Path, help="folder for the sets (default runs/bench_probe/WORLD)"
    )
    args = parser.parse_args()

    from localguard.hub import resolve_model

    out = args.out or Path("runs") / "bench_probe" / args.world
    out.mkdir(parents=True, exist_ok=True)
    if args.world == "smollm2":
        model_dir = resolve_model(args.model or "smollm2:135m")
        train, heldout = smollm2_sets(shared_data(), args.n_benign)
    else:
        model_dir = resolve_model(args.model or f"starter:{args.size}", seed=args.seed)
        train, heldout = starter_sets(model_dir.parent / "data")
    start = time.perf_counter()
    sets = features(model_dir, {"train": train, **heldout}, out)
    print(
        f"features of {sum(len(v[1]) for v in sets.values())} prompts in "
        f"{time.perf_counter() - start:.1f} s; {out / 'train.jsonl'} is the training set"
    )

    x, y = sets.pop("train")
    header = f"{'l2':>6} {'chosen':>7} {'val_auroc':>9} {'val_f1':>6} {'fit_s':>6}"
    header += "".join(f" {name + '>0.5':>22}" for name in sets)
    print(header)
    grids = []
    for l2 in args.l2:
        start = time.perf_counter()
        probe, metrics = fit_probe(x, y, seed=args.seed, l2=l2)
        seconds = time.perf_counter() - start
        line = f"{l2!s:>6} {metrics['l2']:>7.3g} {metrics['auroc']:>9.3f} {metrics['f1']:>6.3f}"
        line += f" {seconds:>6.2f}"
        for hx, _ in sets.values():
            risk = probe.predict(hx)
            line += f" {f'{(risk > 0.5).mean():.1%} (mean {risk.mean():.3f})':>22}"
        print(line)
        if metrics.get("l2_cv"):
            grids.append(metrics["l2_cv"])
    for cv in grids:
        print(f"auto: {cv['folds']}-fold cross-validation on the training split ({cv['rule']})")
        print(f"{'l2':>8} {'auroc':>7} {'se':>7}")
        for row in zip(cv["l2"], cv["auroc"], cv["auroc_se"], strict=True):
            print(f"{row[0]:>8.3g} {row[1]:>7.4f} {row[2]:>7.4f}")


if __name__ == "__main__":
    main()
