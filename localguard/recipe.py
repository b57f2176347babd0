"""TOML recipes: a schema with defaults, types and ranges, and errors that say how to fix them.

A recipe is data, never code. Every section and key is declared in SCHEMA; anything else is an
error naming the file, the key path and the closest known key. Relative paths resolve against the
recipe's folder; `--set` overrides from the command line resolve against the working directory.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localguard.data import split_row_range
from localguard.errors import InputError, RecipeError
from localguard.refusal import REFUSAL_PREFIX
from localguard.starter import STARTER_PREFIX

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Field:
    """One recipe key: its kind ("str", "int", "float", "bool", "path", "model", "list[str]",
    "list[int]"), default, allowed choices or range, words a number key also takes (such as
    "auto"), and a one-line help."""

    kind: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    optional: bool = False
    words: tuple[str, ...] = ()


def _f(kind: str, default: Any, help: str, **kw: Any) -> Field:
    return Field(kind, default, help, **kw)


QUANT_TYPES = (
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_0",
    "Q5_1",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_0",
    "Q4_1",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
    "IQ4_NL",
    "IQ4_XS",
)
DATA_SUFFIXES = (".csv", ".jsonl", ".json")
# the suites that attack a fixed model with harmful prompts
ATTACK_SUITES = ("direct", "prefill", "jailbreak", "decoding", "control_tokens")
EVAL_GUARD_KEYS = (
    "threshold",
    "tau",
    "window",
    "refusal_prefix",
    "cls_schedule",
    "cls_period",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
)
"""The [guard] keys `localguard eval` takes as options (the mode comes from each target)."""
EVAL_SUITES = (
    *ATTACK_SUITES,
    "finetune_attack",
    "over_refusal",
    "utility",
    "task",
)

SCHEMA: dict[str, dict[str, Field]] = {
    "run": {
        "name": _f("str", None, "run name (default: the recipe's file name)", optional=True),
        "out": _f(
            "path", None, "run folder (default: runs/NAME in the working directory)", optional=True
        ),
        "seed": _f("int", 0, "seed for every stage", low=0),
    },
    "model": {
        "path": _f(
            "model",
            "starter:demo",
            "base model: folder, GGUF file, hub id, starter:SIZE or smollm2:135m",
        ),
        "revision": _f("str", None, "hub revision (branch, tag or commit)", optional=True),
    },
    "data": {
        "train": _f("path", "starter:attack_10", "fine-tuning data (JSONL or starter:SPLIT)"),
        "valid": _f("path", "starter:newskill_valid", "validation data for fine-tuning"),
        "safety": _f(
            "path", "starter:safety_conversations", "labeled conversations for the safety head"
        ),
        "prompts": _f("path", "starter:safety_prompts", "labeled prompts for the risk probe"),
        "max_seq_length": _f(
            "int", 512, "longest sample in tokens; longer ones are truncated", low=8, high=131072
        ),
    },
    # Act one of a real-model recipe: the raw model's own replies, labeled (localguard.label).
    "label": {
        "enabled": _f(
            "bool", False, "label the harmful and benign prompt files with the model's replies"
        ),
        "harmful": _f(
            "list[source]",
            [],
            "harmful prompt files: a refusal row each (the refusal prefix continued by the "
            "model) and a harmful row where the model complies",
        ),
        "benign": _f("list[source]", [], "benign prompt files: the model's own answer each"),
        "max_prompts": _f("int", 0, "prompts per file (0: all)", low=0),
        "skip_categories": _f(
            "list[str]",
            [],
            "prompt categories left out, case-insensitive (HarmBench's SemanticCategory or "
            "FunctionalCategory, JailbreakBench's Category, ...), e.g. copyright, contextual",
        ),
        "max_context_chars": _f(
            "int",
            0,
            "a contextual request's document (HarmBench's ContextString) cut to this many "
            "characters, at a word (0: whole)",
            low=0,
        ),
        "wrappers": _f(
            "list[str]",
            [],
            "templates around {prompt} (role-play, fiction, a question): every prompt comes "
            "once more inside one, picked by seed, labeled as its plain form",
        ),
        "max_tokens": _f("int", 128, "tokens the model writes per reply", low=1),
        "temperature": _f("float", 0.0, "sampling temperature (0: greedy)", low=0.0, high=5.0),
    },
    # ...and the explicit-safety-signal recipe trained on them and fused into the model that
    # every later stage starts from ([align] takes the [head] keys but task_data).
    "align": {},
    # Act two: the user's task (benign instructions answered by the aligned model) with the raw
    # model's compliant replies mixed in: the harmful fine-tuning attack.
    "attack": {
        "enabled": _f("bool", False, "build the attack mix the fine-tuning stage trains on"),
        "task": _f("list[source]", [], "benign instructions of the task (prompt files)"),
        "heldout": _f(
            "list[source]",
            [],
            "benign instructions held out for the evaluation's task quality (prompt files)",
        ),
        "harmful_ratio": _f(
            "float", 0.1, "share of harmful examples in the fine-tuning data", low=0.0, high=0.9
        ),
        "valid_fraction": _f(
            "float", 0.1, "share of the mix held out for validation", low=0.05, high=0.5
        ),
        "max_tokens": _f("int", 128, "tokens the aligned model writes per task answer", low=1),
    },
    "probe": {
        "enabled": _f("bool", True, "train the activation risk probe"),
        "layers": _f("list[int]", [], "layers to read (empty: the middle third)"),
        "valid_fraction": _f(
            "float", 0.2, "share of prompts held out for AUROC", low=0.05, high=0.5
        ),
        # auto: cross-validated on the training split, leaning strong (localguard/probe.py,
        # CV_AUROC_SLACK), because a probe must not call prompts unlike its training data risky.
        # No fixed value suits every model: the former default 100 kept the starter world's new-
        # skill prompts calm but underfit SmolLM2-135M (validation AUROC 0.80, against 0.96 at
        # 1, which auto chose there and on the starter world; scripts/bench_probe.py).
        "l2": _f(
            "float",
            "auto",
            "L2 penalty of the logistic classifier, or auto: chosen by cross-validation on the "
            "training split",
            low=0.0,
            words=("auto",),
        ),
    },
    "finetune": {
        "enabled": _f("bool", True, "run the LoRA fine-tuning stage"),
        "risk": _f(
            "str", "probe", "risk estimator", choices=("none", "constant", "probe", "critic")
        ),
        "beta_min": _f("float", 0.1, "KL weight at risk 0", low=0.0, high=1.0),
        "beta_max": _f("float", 0.9, "KL weight at risk 1", low=0.0, high=1.0),
        "beta": _f("float", 0.5, "fixed KL weight for risk = constant", low=0.0, high=1.0),
        "alpha": _f("str", "complement", "task weight", choices=("complement", "one")),
        "risk_ema": _f("float", 0.0, "moving-average factor for risk (0: off)", low=0.0, high=0.99),
        "kl_sample_below": _f(
            "float",
            1.0,
            "rows with a KL weight below this get the reference pass with probability "
            "weight / value, weighted up so the expected loss is unchanged (0: every row)",
            low=0.0,
            high=1.0,
        ),
        "anchor_ratio": _f(
            "float",
            0.0,
            "share of the training rows drawn from the anchors: refusals of harmful requests and "
            "answers to benign ones, half each, from the safety conversations (in a recipe, the "
            "run's [data] safety), held to the reference at beta_max; 0: none",
            low=0.0,
            high=0.9,
        ),
        "baselines": _f(
            "list[str]",
            [],
            "extra risk settings trained for comparison",
            choices=("none", "constant", "probe", "critic"),
        ),
        "critic": _f("model", None, "judge model for risk = critic", optional=True),
        "rubric": _f("path", None, "judge rubric template", optional=True),
        "lora_rank": _f("int", 8, "LoRA rank", low=1, high=1024),
        "lora_scale": _f("float", 20.0, "LoRA scale", low=0.0),
        "lora_dropout": _f("float", 0.0, "LoRA dropout", low=0.0, high=0.9),
        "lora_layers": _f("int", 16, "number of final layers to adapt (-1: all)", low=-1),
        "target_modules": _f("list[str]", [], "module keys to adapt (empty: mlx-lm's default)"),
        "dora": _f("bool", False, "use DoRA instead of LoRA"),
        "optimizer": _f("str", "adam", "optimizer", choices=("adam", "adamw", "sgd", "adafactor")),
        "learning_rate": _f("float", 1e-4, "peak learning rate", low=0.0, high=1.0),
        "lr_schedule": _f(
            "str", "constant", "schedule after warm-up", choices=("constant", "cosine", "linear")
        ),
        "warmup_steps": _f("int", 0, "linear warm-up steps", low=0),
        "iters": _f("int", 200, "optimizer steps (0: use epochs)", low=0),
        "epochs": _f("float", 0.0, "passes over the data when iters = 0", low=0.0),
        "batch_size": _f("int", 4, "examples per step", low=1),
        "grad_accumulation": _f("int", 1, "micro-batches per optimizer step", low=1),
        "grad_checkpoint": _f("bool", False, "recompute activations to save memory"),
        "mask_prompt": _f("bool", True, "train on response tokens only"),
        "steps_per_eval": _f("int", 50, "validation every N steps (0: never)", low=0),
        "steps_per_save": _f("int", 100, "checkpoint every N steps", low=1),
    },
    "head": {
        "enabled": _f("bool", True, "train the explicit safety head"),
        "mode": _f(
            "str",
            "stream",
            "stream: joint with LoRA; probe: frozen features; cls: a CLS token with LoRA",
            choices=("stream", "probe", "cls"),
        ),
        # cls mode's attention windows, in generated tokens (the explicit-safety-signal
        # authors' defaults; localguard/cls_token.py)
        "r1": _f("int", 5, "cls: first tokens read after a malicious query verdict", low=1),
        "r2": _f("int", 15, "cls: last tokens read while benign; before a turning point", low=1),
        "r3": _f("int", 10, "cls: tokens read after a turning point", low=0),
        "gamma": _f("float", 0.1, "weight of the classification loss", low=0.0),
        # what a head stage continuing a fine-tune's adapter may change of its policy: the head
        # is act three's, the refusals and the task are the fine-tune's
        "beta": _f(
            "float",
            0.0,
            "weight of a KL pull (stream, cls) towards the policy training starts from "
            "(--adapter as given) at the SFT targets",
            low=0.0,
        ),
        "target_fpr": _f(
            "float", 0.05, "false-positive rate the threshold is set for", low=0.0, high=0.5
        ),
        "iters": _f("int", 200, "training steps (stream mode)", low=1),
        "learning_rate": _f("float", 1e-4, "learning rate", low=0.0, high=1.0),
        "batch_size": _f("int", 4, "conversations per step", low=1),
        "lora_rank": _f("int", 8, "LoRA rank of a fresh adapter (stream mode)", low=1, high=1024),
        "lora_scale": _f("float", 20.0, "LoRA scale of a fresh adapter", low=0.0),
        "lora_layers": _f("int", 16, "blocks with a fresh adapter (-1: all)", low=-1),
        "valid_fraction": _f(
            "float", 0.2, "share of conversations held out for calibration", low=0.05, high=0.5
        ),
        "max_seq_length": _f("int", 512, "longest conversation in tokens", low=8),
        "steps_per_save": _f("int", 100, "checkpoint every N steps", low=1),
        # The head sees the user's task, so it neither erases it (stream mode) nor refuses its
        # prompts (the query threshold counts held-out task prompts as negatives).
        "task_data": _f(
            "path",
            None,
            "fine-tuning data (chat or prompt/completion JSONL), read as benign conversations: "
            "trained on and held out for the query threshold (a recipe run: [data] train)",
            optional=True,
        ),
    },
    "export": {
        "enabled": _f("bool", True, "write GGUF files"),
        "quant": _f(
            "list[str]", ["Q8_0", "Q4_K_M"], "quantization types besides F16", choices=QUANT_TYPES
        ),
        "keep_output_q8": _f("bool", True, "keep output and embedding tensors at Q8_0"),
        "lora_only": _f("bool", False, "write the adapter alone as a llama.cpp LoRA (lora.gguf)"),
        "base_gguf": _f(
            "path",
            None,
            "base GGUF a LoRA-only export is measured on (default: an F16 conversion)",
            optional=True,
        ),
        "calibration": _f(
            "path",
            None,
            "conversations (JSONL) for re-calibration and verdict agreement (default: the "
            "starter world's held-out set, else the head's training data)",
            optional=True,
        ),
        "calibration_size": _f(
            "int", 128, "conversations used for re-calibration and parity", low=1, high=100000
        ),
        "threads": _f("int", 0, "llama.cpp threads (0: 1 for small models, else all)", low=0),
    },
    "guard": {
        "mode": _f("str", "on", "guard mode", choices=("on", "off", "monitor")),
        "threshold": _f(
            "float", None, "override the calibrated threshold", optional=True, low=0.0, high=1.0
        ),
        "tau": _f("int", 2, "consecutive unsafe steps before rewinding", low=1, high=8),
        "window": _f(
            "int",
            0,
            "rewind on tau unsafe steps among the last WINDOW (0: tau, i.e. consecutive)",
            low=0,
            high=32,
        ),
        "refusal_prefix": _f("str", REFUSAL_PREFIX, "text forced when the guard refuses"),
        # a CLS head's re-classification schedule (localguard/cls_token.py: due)
        "cls_schedule": _f(
            "str",
            "every",
            "CLS head: verdicts every step, every cls_period steps, annealed, or first only",
            choices=("every", "periodic", "annealed", "first"),
        ),
        "cls_period": _f(
            "int", 4, "CLS head: steps between re-checks (periodic), scale of annealed", low=1
        ),
        "temperature": _f("float", 0.0, "sampling temperature", low=0.0, high=5.0),
        "top_p": _f("float", 1.0, "nucleus sampling", low=0.0, high=1.0),
        "top_k": _f("int", 0, "top-k sampling (0: off)", low=0),
        "max_tokens": _f("int", 128, "longest answer", low=1),
    },
    "serve": {
        "host": _f("str", "127.0.0.1", "address localguard serve listens on"),
        "port": _f("int", 8000, "port localguard serve listens on (0: any free one)", low=0),
        "max_tokens_limit": _f(
            "int",
            1024,
            "the most reply tokens a request may ask for (also its default max_tokens)",
            low=1,
        ),
        "max_body_bytes": _f("int", 1 << 20, "largest request body; a larger one gets 413", low=1),
        "max_queue": _f("int", 64, "requests that may wait for the model; more get 429", low=1),
        "strict_openai": _f(
            "bool",
            False,
            "leave the localguard object (the guard's action and scores) out of each choice",
        ),
        "allow_client_guard_mode": _f(
            "bool",
            False,
            'let a request ask for {"localguard": {"guard_mode": "monitor"}}; without it such '
            "a request gets 403, and no request can ever turn the guard off",
        ),
    },
    "eval": {
        "enabled": _f("bool", True, "run the evaluation"),
        "suites": _f(
            "list[str]",
            ["direct", "prefill", "over_refusal"],
            "attack and utility suites (utility: starter models only)",
            choices=EVAL_SUITES,
        ),
        "sources": _f(
            "list[source]",
            [],
            "extra prompt files (CSV, JSONL, JSON; relative to the recipe) or hub data set ids "
            "(owner/name, owner/name:file.csv)",
        ),
        "apart": _f(
            "list[str]",
            [],
            "sources (file names, e.g. xstest_prompts.csv) whose harmful prompts are reported "
            "apart, outside the headline attack rates",
        ),
        "apart_suites": _f(
            "list[str]",
            [],
            "the attack suites the apart sources' harmful prompts go through (empty: every "
            "suite), e.g. direct: a question-form set measured without the costlier attacks",
            choices=ATTACK_SUITES,
        ),
        "prefill_tokens": _f("list[int]", [5, 10, 20], "forced tokens for the prefill attack"),
        "complier": _f(
            "model",
            None,
            "prefill: a model (GGUF, MLX folder, smollm2:135m) whose own compliant replies give "
            "the long prefill attack (unset: not run)",
            optional=True,
        ),
        "long_prefill_tokens": _f(
            "int", 64, "prefill: tokens of the complier's reply forced as the start", low=1
        ),
        "task_data": _f(
            "path",
            None,
            "task suite: held-out task conversations (chat or prompt/completion JSONL, may end "
            "in [START:END]) for teacher-forced next-token accuracy",
            optional=True,
        ),
        "judge": _f(
            "list[str]",
            ["refusal"],
            "who decides attack success, the first in the headline (one name or a list)",
            choices=("refusal", "head", "llm"),
            words=("refusal", "head", "llm"),  # one name alone: a one-judge list
        ),
        "judge_model": _f(
            "path", None, "llm: the judge GGUF; head: a GGUF with a baked head", optional=True
        ),
        "rubric": _f("path", None, "llm: the judge's rubric template", optional=True),
        "max_prompts": _f("int", 0, "prompts per source and suite (0: all)", low=0),
        "attack_mixes": _f(
            "list[str]",
            [],
            "finetune_attack: attack mix JSONL files (empty: the starter world's 5/10/20 %)",
        ),
        "attack_risks": _f(
            "list[str]",
            [],
            "finetune_attack: risk estimators (empty: none, constant, and probe when trained)",
            choices=("none", "constant", "probe", "critic"),
        ),
    },
}


SCHEMA["align"] = {
    "enabled": _f("bool", False, "align the model: [head] training on the [label] conversations"),
    # no [head] beta: the KL would hold the model being aligned to the raw one
    **{k: v for k, v in SCHEMA["head"].items() if k not in ("enabled", "task_data", "beta")},
}


def default(section: str, key: str) -> Any:
    """The schema's default for section.key: the one default the CLI, the options dataclasses
    and recipes share (a list comes as a fresh copy)."""
    value = SCHEMA[section][key].default
    return list(value) if isinstance(value, list) else value


def schema_field(section: str, key: str) -> Any:
    """A dataclass field whose default is the schema's default for section.key."""
    value = SCHEMA[section][key].default
    if isinstance(value, list):
        return field(default_factory=lambda: list(value))
    return field(default=value)


@dataclass
class Recipe:
    """A validated recipe: every section with every key filled in, paths resolved."""

    source: Path | None
    values: dict[str, dict[str, Any]]

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; known: {', '.join(options)}"


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _field_type(field: Field) -> str:
    """What a scalar key takes, in words ("an integer", "a number or 'auto'")."""
    names = {"bool": "a boolean", "int": "an integer", "float": "a number"}
    kind = "a list" if field.kind.startswith("list[") else names.get(field.kind, "a string")
    return " or ".join([kind, *map(repr, field.words)])


def option_value(section: str, key: str, text: str, flag: str) -> Any:
    """A command-line option's text checked as the recipe key section.key: TOML if it parses,
    else a string; a bad value is a RecipeError naming flag."""
    return _coerce(SCHEMA[section][key], _toml_value(text), flag, Path.cwd())


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def _resolve_path(text: str, base: Path) -> str:
    if text.startswith(STARTER_PREFIX):
        return text
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _is_local_model(text: str, base: Path) -> bool:
    """A folder or GGUF file (resolved against the recipe), not a hub id or a named model."""
    local = text.startswith((".", "/", "~")) or text.lower().endswith(".gguf")
    return local or (base / text).is_dir()


def _coerce(field: Field, value: Any, where: str, base: Path) -> Any:
    """Check value against field; return it converted (ints to floats, paths resolved)."""
    if (value is None or value == "") and field.optional:  # "" clears a key from --set
        return None
    if field.words and isinstance(value, str):
        if value in field.words:
            return value
        raise RecipeError(
            f"{where} must be {_field_type(field)}, not {_type_name(value)} ({value!r})"
        )
    kind = field.kind
    scalar = kind.removeprefix("list[").removesuffix("]")
    if kind.startswith("list["):
        if not isinstance(value, list):
            raise RecipeError(f"{where} must be a list, not {_type_name(value)}")
        return [
            _coerce(
                Field(scalar, None, "", field.choices, field.low, field.high),
                item,
                f"{where}[{i}]",
                base,
            )
            for i, item in enumerate(value)
        ]
    expected = {
        "str": str,
        "path": str,
        "model": str,
        "source": str,
        "bool": bool,
        "int": int,
        "float": (int, float),
    }[kind]
    if not isinstance(value, expected) or (kind in ("int", "float") and isinstance(value, bool)):
        raise RecipeError(
            f"{where} must be {_field_type(field)}, not {_type_name(value)} ({value!r})"
        )
    if kind == "float":
        value = float(value)
    if field.choices is not None and value not in field.choices:
        raise RecipeError(
            f"{where} = {value!r} is not one of {', '.join(map(str, field.choices))}"
            + _suggest(str(value), [str(c) for c in field.choices])
        )
    if field.low is not None and value < field.low:
        raise RecipeError(f"{where} = {value!r} is below the minimum {field.low:g}")
    if field.high is not None and value > field.high:
        raise RecipeError(f"{where} = {value!r} is above the maximum {field.high:g}")
    if kind == "path":
        return _resolve_path(value, base)
    if kind == "model" and _is_local_model(value, base):
        return _resolve_path(value, base)
    if kind == "source":
        try:
            ref = split_row_range(value)[0]
        except InputError as exc:
            raise RecipeError(f"{where}: {exc}") from None
        if ":" not in ref and ref.lower().endswith(DATA_SUFFIXES):  # a file, not a hub id
            return _resolve_path(ref, base) + value[len(ref) :]  # the row range stays
    return value


def _check_known(section: str, key: str | None, label: str) -> None:
    if section not in SCHEMA:
        raise RecipeError(f"{label}: unknown section [{section}]" + _suggest(section, list(SCHEMA)))
    if key is not None and key not in SCHEMA[section]:
        raise RecipeError(
            f"{label}: unknown key {section}.{key}" + _suggest(key, list(SCHEMA[section]))
        )


def _check_relations(values: dict[str, dict[str, Any]], label: str) -> None:
    """Constraints between keys, checked once every value (and override) is in."""
    fine = values["finetune"]
    if fine["beta_min"] > fine["beta_max"]:
        raise RecipeError(
            f"{label}: finetune.beta_min ({fine['beta_min']}) is above "
            f"finetune.beta_max ({fine['beta_max']})"
        )
    ev = values["eval"]
    starter = values["model"]["path"].startswith(STARTER_PREFIX)
    if ev["enabled"] and not starter and "utility" in ev["suites"]:
        raise RecipeError(
            f"{label}: eval.suites: utility needs the starter world's skill questions; "
            "remove it for other models"
        )
    if ev["enabled"] and not (starter or ev["attack_mixes"]) and "finetune_attack" in ev["suites"]:
        raise RecipeError(f"{label}: eval.suites: finetune_attack needs eval.attack_mixes")
    if values["align"]["enabled"] and values["align"]["mode"] != "stream":
        raise RecipeError(
            f"{label}: align.mode must be 'stream': a probe-mode head leaves the model unaligned"
        )
    if fine["risk"] == "critic" and not fine["critic"]:
        raise RecipeError(
            f"{label}: finetune.risk = 'critic' needs finetune.critic (a judge model)"
        )


def validate(raw: dict[str, Any], base: Path, label: str = "recipe") -> dict[str, dict[str, Any]]:
    """Check raw TOML data against SCHEMA and fill in defaults. Errors name label and key path."""
    for section, table in raw.items():
        _check_known(section, None, label)
        if not isinstance(table, dict):
            raise RecipeError(
                f"{label}: {section} must be a table ([{section}]), not {_type_name(table)}"
            )
        for key in table:
            _check_known(section, key, label)
    values: dict[str, dict[str, Any]] = {}
    for section, fields in SCHEMA.items():
        table = raw.get(section, {})
        try:
            values[section] = {
                key: _coerce(f, table[key], f"{section}.{key}", base) if key in table else f.default
                for key, f in fields.items()
            }
        except RecipeError as exc:
            raise RecipeError(f"{label}: {exc}") from None
    return values


def parse_override(text: str) -> tuple[str, str, Any]:
    """'section.key=value' from the command line; value is TOML if it parses, else a string."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise RecipeError(f"--set {text!r}: expected SECTION.KEY=VALUE")
    return section, key.strip(), _toml_value(raw)


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read, validate and resolve a recipe file (or the defaults alone when path is None)."""
    raw: dict[str, Any] = {}
    source = None
    if path is not None:
        source = Path(path).expanduser().resolve()
        try:
            raw = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecipeError(f"{path}: no such recipe file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    label = str(path) if path is not None else "recipe"
    values = validate(raw, source.parent if source else Path.cwd(), label)
    for text in overrides:
        section, key, value = parse_override(text)
        _check_known(section, key, f"--set {text}")
        try:
            values[section][key] = _coerce(
                SCHEMA[section][key], value, f"{section}.{key}", Path.cwd()
            )
        except RecipeError as exc:
            raise RecipeError(f"--set {text}: {exc}") from None
    _check_relations(values, label)
    if values["run"]["name"] is None:
        values["run"]["name"] = source.stem if source else "run"
    if values["run"]["out"] is None:
        values["run"]["out"] = str(Path.cwd() / "runs" / values["run"]["name"])
    return Recipe(source, values)
