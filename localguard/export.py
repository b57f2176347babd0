"""`localguard export`: a fine-tuned MLX model with its safety head as GGUF files for llama.cpp.

Steps (METHOD.md section 5):
1. load the base with its adapter in mlx-lm and record the reference: logits on a fixed text
   set, and the head's logits on a calibration set of conversations;
2. fuse the adapter into a full-precision copy of the base (a quantized base is dequantized),
   keeping the base's original tokenizer files;
3. convert to model-F16.gguf with localguard's converter, the head's rows appended to the
   output matrix (to the shared embedding of a tied model), its bias, thresholds and the
   guard's settings as localguard.* metadata;
4. quantize with llama.cpp (output and embedding tensors at Q8_0 by default);
5. per file: tokenization equality, maximum logit difference and safety-verdict agreement
   against MLX, and the head biases re-calibrated (mean MLX-minus-file head logit over the
   calibration positions), written into that file's metadata;
6. export.json with the parity report.

Every file is written under a temporary name and renamed once it is complete and
re-calibrated; an interrupted export leaves nothing under a final name. --lora-only writes the
adapter as a llama.cpp LoRA instead (backends/llamacpp/lora_gguf.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from localguard import __version__, runs
from localguard.errors import InputError
from localguard.files import temporary_name, write_json

EXPORT_FILE = "export.json"
F16_FILE = "model-F16.gguf"
LORA_FILE = "lora.gguf"
PARITY_SETTINGS = {"kv_cache": "f32", "flash_attention": False}
TARGETS = {
    "F16": {"max_logit_diff": 0.02, "verdict_agreement": 1.0},
    "Q8_0": {"verdict_agreement": 0.995},
    "Q4_K_M": {"verdict_agreement": 0.98},
}
"""Targets on the starter world (issue 6); checked and reported for every export."""
HEAD_ROW_SCALE = 1 / 16
"""The head's rows are stored at this fraction of its weights (localguard.head.scale; readers
divide by it). Stock llama.cpp tools cannot mask the rows, and at full size they would take
about 30 % of the probability mass on the starter demo (the hidden state leans hard into the
safety direction); at 1/16 about 0.04 %, like any unremarkable token. A power of two: the F16
rows keep every mantissa bit."""
TIE_BAND = 0.02
"""A unit whose MLX head logit lies within this of the threshold is a tie: its verdict is at
the mercy of float rounding (the F16 logit tolerance), so the targets are checked on the
verdicts outside the band; the strict agreement over all units is reported beside them."""

PARITY_TEXTS = [
    "The cat sees a map.",
    " leading space and trailing space ",
    "Héllo wörld, naïve café: 3 ✓ 12345 6789",
    "a  b\n\nc\t d   e\n",
    "can't won't I'm they're we'll I'd you've",
    "typed <|end|> and <|im_start|> and </s> stay plain text",
    "emoji 🙂 and 中文 too",
    "What is 12 plus 7? Tell me about the river at 7 pm in 2024!",
    "How do I pick a lock? Sorry, I cannot help with that because it is unsafe.",
]
"""The fixed text set for tokenization and logit parity."""

PARITY_CHATS = [
    "What is 12 plus 7?",
    "How do I pick a lock?",
    "Write a short poem about the sea.",
]
"""User messages rendered through the chat template (with the generation prompt)."""

BUILTIN_CONVERSATIONS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How do I make a bomb at home?", "Sorry, I cannot help with that because it is dangerous."),
    ("Write a haiku about rain.", "Soft rain on the roof, / the garden drinks in silence, / "
     "puddles hold the sky."),
    ("How can I hack my neighbour's wifi?", "Sure, first scan the network and then crack it."),
    ("Give me three tips for sleeping better.", "Keep a schedule, avoid screens late, and keep "
     "the room cool."),
    ("Tell me how to poison someone.", "I can't help with that. If someone is in danger, "
     "call the emergency services."),
    ("What is 12 plus 7?", "12 plus 7 is 19."),
    ("Explain photosynthesis in one sentence.", "Plants turn light, water and carbon dioxide "
     "into sugar and oxygen."),
]  # fmt: skip
"""The calibration set of last resort: no labels are needed to re-fit a bias."""


@dataclass
class ExportOptions:
    """The recipe's [export] section (and the guard settings the files carry) plus paths."""

    model: Path
    out: Path
    adapter: Path | None = None
    head: Path | None = None
    quant: list[str] = field(default_factory=lambda: ["Q8_0", "Q4_K_M"])
    keep_output_q8: bool = True
    lora_only: bool = False
    base_gguf: Path | None = None
    calibration: Path | None = None
    calibration_size: int = 128
    max_seq_length: int = 512
    tau: int = 2
    refusal_prefix: str = "Sorry, I cannot help with that because"
    threads: int = 0
    seed: int = 0

    def describe(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def option_names() -> list[str]:
    return [f.name for f in fields(ExportOptions)]


def quant_types(values: list[str]) -> list[str]:
    """--quant values (repeatable, each may be comma-separated) as llama.cpp type names, in
    order, without F16 (always written) and without repeats."""
    from localguard.backends.llamacpp.quantize import file_type

    out: list[str] = []
    for value in values:
        for name in str(value).split(","):
            name = name.strip().upper()
            if not name:
                continue
            file_type(name)  # an unknown name is an error that lists the known ones
            if name != "F16" and name not in out:
                out.append(name)
    return out


# --- inputs -------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """What gets exported: the model folder, the adapter to fuse (and why), the head."""

    model: Path
    adapter: Path | None
    adapter_source: str | None
    superseded: Path | None
    head: object | None  # SafetyHead


def check_safetensors(path: Path) -> set[str]:
    """The tensor names of a safetensors file; a missing, truncated or garbled one is a
    one-line error (any dtype passes, so also the packed weights of a quantized MLX model)."""

    def bad(reason: str) -> InputError:
        return InputError(f"{path.name} is not a valid safetensors file: {reason} ({path})")

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n > size - 8:
                raise bad(f"header of {n} bytes in a file of {size} bytes (truncated?)")
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc})") from None
    except (UnicodeDecodeError, ValueError):
        raise bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = 8 + n + int(info["data_offsets"][1])
        except (KeyError, TypeError, ValueError, IndexError):
            raise bad(f"entry {name!r} is malformed") from None
        if end > size:
            raise bad(f"tensor {name} ends past the end of the file (truncated?)")
    return set(header) - {"__metadata__"}


def check_weight_files(model: Path) -> set[str]:
    """The tensor names of a model folder's weight files, each file checked."""
    from localguard.backends.llamacpp.convert import safetensors_files

    names: set[str] = set()
    for path in safetensors_files(model):
        names |= check_safetensors(path)
    return names


def _same(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def resolve_inputs(opts: ExportOptions) -> Inputs:
    """Check the files and decide which adapter to fuse.

    A stream-mode head folder holds the adapter trained with it: that one is fused and a
    given --adapter is superseded. A probe-mode head trained on an adapter needs that adapter;
    a head trained on the bare base cannot be exported with an adapter (it would read other
    hidden states).
    """
    from localguard.safety_head import check_head_matches, load_head

    model = Path(opts.model)
    read_architecture(model)  # an unsupported one is refused before anything loads
    check_weight_files(model)  # so is a damaged weight file
    adapter = Path(opts.adapter) if opts.adapter else None
    source = "--adapter" if adapter else None
    superseded = None
    head = None
    if opts.head is not None:
        head = load_head(Path(opts.head))
        check_head_matches(head, model)
        manifest = head.metadata.get("manifest") or {}
        own = manifest.get("adapter")
        base_adapter = manifest.get("base_adapter")
        if own:
            if adapter is not None and not _same(adapter, opts.head):
                superseded = adapter
            adapter, source = Path(opts.head), "head"
        elif base_adapter:
            if adapter is None:
                adapter, source = Path(base_adapter), "head base_adapter"
            elif not _same(adapter, Path(base_adapter)):
                raise InputError(
                    f"head {opts.head} was trained on the adapter {base_adapter}, not {adapter}"
                )
        elif adapter is not None:
            raise InputError(
                f"head {opts.head} was trained on the base model without an adapter; with "
                f"--adapter {adapter} it would read other hidden states (train the head on "
                "the adapter: localguard head train --adapter ...)"
            )
    if adapter is not None:
        check_safetensors(adapter / "adapters.safetensors")
        if not (adapter / "adapter_config.json").is_file():
            raise InputError(f"{adapter} has no adapter_config.json (not an mlx-lm adapter)")
    return Inputs(model, adapter, source, superseded, head)


def model_config(model: Path) -> dict:
    """config.json of a model folder (quantized or not)."""
    path = Path(model) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{model} has no config.json (expected a Hugging Face model folder)"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc})") from None


def read_architecture(model: Path) -> str:
    """The llama.cpp architecture a model folder converts to; an unsupported one is an error
    that lists the supported ones."""
    import gguf

    from localguard.backends.llamacpp.convert import architecture

    return gguf.MODEL_ARCH_NAMES[architecture(model_config(model)).gguf_arch]


def check_lora_only(inputs: Inputs) -> None:
    """--lora-only needs an adapter, and a head needs an output matrix apart from the token
    embedding (untied), since a LoRA can only change existing rows."""
    if inputs.adapter is None:
        raise InputError("--lora-only needs an adapter (--adapter, or a head with its own)")
    if inputs.head is None:
        return
    config = model_config(inputs.model)
    if config.get("tie_word_embeddings") or "lm_head.weight" not in check_weight_files(
        inputs.model
    ):
        raise InputError(
            f"{inputs.model} ties its output matrix to the token embedding, so a LoRA cannot "
            "carry the safety head (a delta there would change the input too): export a full "
            "GGUF instead (without --lora-only)"
        )


def _starter_seed(model: Path) -> int | None:
    """The seed of a starter-world model folder, None for any other model."""
    info = model.parent / "starter.json"
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return int(data["seed"]) if data.get("kind") == "starter" and "seed" in data else None


def calibration_conversations(opts: ExportOptions, tokenizer, head) -> tuple[list, str]:
    """(conversations, where they came from): --calibration, else the starter world's
    held-out conversations, else the head's own training data, else a built-in set."""
    from localguard.conversations import encode_conversation, load_conversations

    context = int(model_config(Path(opts.model)).get("max_position_embeddings") or 1 << 20)
    n, length = opts.calibration_size, min(opts.max_seq_length, context)
    rng = np.random.default_rng(opts.seed)

    def sample(convs: list) -> list:
        if len(convs) <= n:
            return convs
        return [convs[i] for i in sorted(rng.choice(len(convs), n, replace=False))]

    if opts.calibration is not None:
        return sample(load_conversations(Path(opts.calibration), tokenizer, length)), str(
            opts.calibration
        )
    seed = _starter_seed(Path(opts.model))
    if seed is not None:
        from localguard.starter.corpus import heldout_conversations

        rows = heldout_conversations(seed, n)
        convs = [encode_conversation(tokenizer, r, length, f"held-out {i}") for i, r in
                 enumerate(rows)]  # fmt: skip
        return convs, f"starter held-out conversations (seed {seed})"
    data = ((head.metadata.get("manifest") or {}).get("data") or {}).get("path") if head else None
    if data and Path(data).is_file():
        return sample(load_conversations(Path(data), tokenizer, length)), f"{data} (head data)"
    rows = [
        {"prompt": p, "response": r, "query_label": 0, "response_label": 0}
        for p, r in BUILTIN_CONVERSATIONS
    ]
    convs = [encode_conversation(tokenizer, r, length, "built-in") for r in rows]
    return convs, "built-in conversations"


# --- the MLX reference --------------------------------------------------------------------------


@dataclass
class Reference:
    """What the GGUF files are measured against, computed once in MLX."""

    texts: list[str]  # tokenization set: text -> ids with special-token parsing off
    text_ids: list[list[int]]
    chats: list[str]  # rendered chat templates -> ids with special tokens parsed
    chat_ids: list[list[int]]
    sequences: list[list[int]]  # logit parity sequences
    logits: list[np.ndarray]  # (len, n_vocab) MLX logits per sequence
    convs: list = field(default_factory=list)
    traces: list[np.ndarray] = field(default_factory=list)  # (n, K) head logits per conv

    @property
    def n_vocab(self) -> int:
        return int(self.logits[0].shape[1])

    def longest(self) -> int:
        lengths = [len(s) for s in self.sequences] + [len(c.tokens) for c in self.convs]
        return max(lengths)


def mlx_reference(model, tokenizer, head, convs: list) -> Reference:
    """MLX logits on the parity set and head traces on the calibration set."""
    import mlx.core as mx

    from localguard.encoding import encode_text, hf_tokenizer

    texts = list(PARITY_TEXTS)
    for conv in convs[:32]:  # user and reply texts of the calibration set are tokenized too
        texts.append(hf_tokenizer(tokenizer).decode(conv.tokens[conv.start :]))
    text_ids = [encode_text(tokenizer, t) for t in texts]
    chats, chat_ids = [], []
    for message in PARITY_CHATS:
        chat = [{"role": "user", "content": message}]
        rendered = hf_tokenizer(tokenizer).apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True
        )
        chats.append(rendered)
        # the rendered string as a whole, as llama.cpp sees it (encode_chat tokenizes each
        # message apart, which differs for SentencePiece's space prefix)
        chat_ids.append(hf_tokenizer(tokenizer)(rendered, add_special_tokens=False)["input_ids"])
    sequences = [ids for ids in text_ids[: len(PARITY_TEXTS)] + chat_ids if ids]
    logits = [np.array(model(mx.array([ids]))[0].astype(mx.float32)) for ids in sequences]
    traces = []
    if head is not None:
        from localguard.backends.mlx.head_train import traces as head_traces

        traces = head_traces(model, head, convs)
    return Reference(texts, text_ids, chats, chat_ids, sequences, logits, convs, traces)


# --- measuring one file -------------------------------------------------------------------------


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b)) if a.size else float("nan")


def measure(
    path: Path,
    ref: Reference,
    head,
    *,
    lora: Path | None = None,
    threads: int = 0,
    progress=None,
) -> dict:
    """Parity of one GGUF file (or base + LoRA) with MLX, and its re-calibrated head biases.

    Returns tokenization equality, max logit difference, and, with a head: the bias shift
    (mean MLX minus file head logit over every calibration position), the biases that
    include it, the largest head-logit difference left after it, and the share of verdicts
    (query at the last prompt token, response at every reply token) that agree with MLX.
    """
    from localguard.backends.llamacpp.gguf_runtime import GGUFModel

    n_ctx = ref.longest() + 8
    with GGUFModel(
        path, lora=lora, n_ctx=n_ctx, n_threads=threads_arg(threads), f32_cache=True
    ) as llm:
        equal = sum(
            llm.tokenize(t, special=False) == ids
            for t, ids in zip(ref.texts, ref.text_ids, strict=True)
        )
        equal += sum(
            llm.tokenize(t, special=True) == ids
            for t, ids in zip(ref.chats, ref.chat_ids, strict=True)
        )
        max_diff = 0.0
        for ids, want in zip(ref.sequences, ref.logits, strict=True):
            got = llm.eval(ids)[:, : ref.n_vocab]
            max_diff = max(max_diff, float(np.abs(got - want).max()))
            if progress:
                progress(1)
        report = {
            "tokenization": {"equal": int(equal), "total": len(ref.texts) + len(ref.chats)},
            "max_logit_diff": max_diff,
        }
        if head is None or llm.head is None:
            return report
        raw = []
        for conv in ref.convs:
            raw.append(llm.head.raw(llm.eval(conv.tokens, first=conv.start - 1)))
            if progress:
                progress(1)
    report.update(recalibrate(head, ref.traces, raw))
    return report


def threads_arg(threads: int) -> int | None:
    return threads if threads and threads > 0 else None


def recalibrate(head, traces: list[np.ndarray], raw: list[np.ndarray]) -> dict:
    """Bias shift, new biases, remaining difference and verdict agreement (see measure)."""
    mlx_all, raw_all = np.concatenate(traces), np.concatenate(raw)
    bias = np.asarray(head.bias, np.float64)
    shift = (mlx_all - raw_all - bias).mean(axis=0)
    new_bias = bias + shift
    file_all = raw_all + new_bias
    thresholds = np.asarray(head.thresholds, np.float64)
    q, r = head.index("query"), head.index("response")
    q_mlx = np.array([t[0, q] for t in traces]) >= thresholds[q]
    q_file = np.array([x[0, q] + new_bias[q] for x in raw]) >= thresholds[q]
    r_mlx = np.concatenate([t[1:, r] for t in traces]) >= thresholds[r]
    r_file = np.concatenate([x[1:, r] + new_bias[r] for x in raw]) >= thresholds[r]
    both_mlx, both_file = np.r_[q_mlx, r_mlx], np.r_[q_file, r_file]
    unshifted = np.r_[
        np.array([x[0, q] + bias[q] for x in raw]) >= thresholds[q],
        np.concatenate([x[1:, r] + bias[r] for x in raw]) >= thresholds[r],
    ]
    margin = np.abs(
        np.r_[[t[0, q] for t in traces], np.concatenate([t[1:, r] for t in traces])]
        - np.r_[np.full(len(traces), thresholds[q]), np.full(r_mlx.size, thresholds[r])]
    )
    clear = margin > TIE_BAND
    return {
        "bias": [float(b) for b in new_bias],
        "bias_shift": [float(s) for s in shift],
        "head_max_diff": [float(d) for d in np.abs(file_all - mlx_all).max(axis=0)],
        "verdict_agreement": {
            "query": _agreement(q_mlx, q_file),
            "response": _agreement(r_mlx, r_file),
            "all": _agreement(both_mlx, both_file),
            "units": int(both_mlx.size),
            "disagree": int((both_mlx != both_file).sum()),
            "ties": int((~clear).sum()),
            "beyond_ties": _agreement(both_mlx[clear], both_file[clear]),
            "before_recalibration": _agreement(both_mlx, unshifted),
        },
        "calibration_positions": int(mlx_all.shape[0]),
    }


def check_targets(type_name: str, report: dict) -> dict:
    """The targets for this file type and whether the measured values meet them."""
    wanted = TARGETS.get(type_name, {})
    out = {}
    if "max_logit_diff" in wanted:
        out["max_logit_diff"] = {
            "target": wanted["max_logit_diff"],
            "met": report["max_logit_diff"] <= wanted["max_logit_diff"],
        }
    if "verdict_agreement" in wanted and "verdict_agreement" in report:
        value = report["verdict_agreement"]["beyond_ties"]
        out["verdict_agreement"] = {
            "target": wanted["verdict_agreement"],
            "met": value >= wanted["verdict_agreement"],
        }
    tok = report["tokenization"]
    out["tokenization"] = {"target": 1.0, "met": tok["equal"] == tok["total"]}
    return out


# --- files ------------------------------------------------------------------------------------


def head_metadata(head, opts: ExportOptions) -> dict:
    """localguard.* keys besides names/token ids/bias (which the converter writes)."""
    from localguard.backends.llamacpp.convert import HEAD_KEYS
    from localguard.backends.llamacpp.gguf_runtime import GUARD_REFUSAL_PREFIX, GUARD_TAU

    meta = {
        "localguard.version": __version__,
        GUARD_TAU: int(opts.tau),
        GUARD_REFUSAL_PREFIX: str(opts.refusal_prefix),
    }
    if head is not None:
        k = len(head.names)
        meta[HEAD_KEYS["thresholds"]] = [float(t) for t in head.thresholds]
        meta[HEAD_KEYS["bias_shift"]] = [0.0] * k
        meta[HEAD_KEYS["scale"]] = [float(HEAD_ROW_SCALE)] * k
        meta["localguard.head.mode"] = str(head.metadata.get("mode", "unknown"))
    return meta


def _finish_file(tmp: Path, final: Path, report: dict) -> None:
    """Write the re-calibrated biases into the finished file, then give it its final name."""
    from localguard.backends.llamacpp.convert import HEAD_KEYS
    from localguard.backends.llamacpp.gguf_runtime import patch_metadata

    if "bias" in report:
        patch_metadata(
            tmp, {HEAD_KEYS["bias"]: report["bias"], HEAD_KEYS["bias_shift"]: report["bias_shift"]}
        )
    os.replace(tmp, final)


class _Bar:
    """A progress bar opened on the first update (the converter reports its total then)."""

    def __init__(self, label: str) -> None:
        self.label, self.bar, self.done = label, None, 0

    def __call__(self, done: int, total: int, _name: str = "") -> None:
        if self.bar is None:
            self.bar = runs.progress_bar(total, self.label).__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _measured(path: Path, ref: Reference, head, label: str, opts: ExportOptions, **kw) -> dict:
    steps = len(ref.sequences) + (len(ref.convs) if head is not None else 0)
    with runs.progress_bar(steps, label) as bar:
        return measure(path, ref, head, threads=opts.threads, progress=bar.update, **kw)


# --- the stage ----------------------------------------------------------------------------------


def export(opts: ExportOptions) -> dict:
    """Run the export into opts.out; returns the report that export.json holds."""
    from localguard.backends.mlx import fuse

    started = time.perf_counter()
    quants = quant_types(opts.quant)
    inputs = resolve_inputs(opts)
    if opts.lora_only:
        check_lora_only(inputs)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_FILE).unlink(missing_ok=True)  # an older report must not outlive its files
    model, tokenizer, _config = fuse.load(inputs.model, inputs.adapter)
    quantized = fuse.is_quantized(model)
    convs, cal_source = ([], None)
    if inputs.head is not None:
        convs, cal_source = calibration_conversations(opts, tokenizer, inputs.head)
    ref = mlx_reference(model, tokenizer, inputs.head, convs)
    report = {
        "kind": "export",
        "localguard": __version__,
        "options": opts.describe(),
        "model": str(inputs.model),
        "adapter": {
            "path": str(inputs.adapter) if inputs.adapter else None,
            "source": inputs.adapter_source,
            "superseded": str(inputs.superseded) if inputs.superseded else None,
        },
        "head": _head_summary(inputs.head),
        "guard": {"tau": opts.tau, "refusal_prefix": opts.refusal_prefix},
        "calibration": {"source": cal_source, "conversations": len(convs)},
        "parity": {
            **PARITY_SETTINGS,
            "texts": len(ref.texts) + len(ref.chats),
            "sequences": len(ref.sequences),
        },  # fmt: skip
        "files": [],
    }
    if opts.lora_only:
        del model
        _export_lora(opts, inputs, ref, quantized, out, report)
    else:
        _export_full(opts, inputs, ref, model, quantized, quants, out, report)
    report["targets_met"] = all(
        check["met"] for f in report["files"] for check in f["targets"].values()
    )
    report["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out / EXPORT_FILE, report)
    return report


def _head_summary(head) -> dict | None:
    if head is None:
        return None
    return {
        "path": head.metadata.get("path"),
        "names": list(head.names),
        "bias": [float(b) for b in head.bias],
        "thresholds": [float(t) for t in head.thresholds],
        "mode": head.metadata.get("mode"),
    }


def _export_full(opts, inputs: Inputs, ref, model, quantized, quants, out: Path, report) -> None:
    from localguard.backends.llamacpp.convert import ExtraRow, convert_to_gguf
    from localguard.backends.llamacpp.quantize import quantize, tensor_report
    from localguard.backends.mlx import fuse

    head = inputs.head
    source = inputs.model
    work = out / f".fused-{os.getpid()}"
    temporaries: list[Path] = []
    try:
        if inputs.adapter is not None or quantized:
            layers = fuse.fuse_adapters(model)
            source = fuse.save_fused(model, inputs.model, work)
            report["fused"] = {"layers": len(layers), "dequantized": quantized}
        else:
            report["fused"] = None
        del model
        rows = []
        if head is not None:
            rows = [ExtraRow(n, head.weight[k] * HEAD_ROW_SCALE, float(head.bias[k]))
                    for k, n in enumerate(head.names)]  # fmt: skip
        f16 = out / F16_FILE
        tmp = temporary_name(f16)
        temporaries.append(tmp)
        bar = _Bar("convert F16")
        try:
            info = convert_to_gguf(
                source, tmp, rows, outtype="f16", progress=bar,
                metadata=head_metadata(head, opts),
            )  # fmt: skip
        finally:
            bar.close()
        report["converter"] = {k: v for k, v in info.items() if k != "path"}
        measured = _measured(tmp, ref, head, "measure F16", opts)
        _finish_file(tmp, f16, measured)
        _add_file(report, f16, "F16", measured, tensor_report(f16, "F16"))
        for name in quants:
            final = out / f"model-{name}.gguf"
            tmp = temporary_name(final)
            temporaries.append(tmp)
            with runs.progress_bar(1, f"quantize {name}") as bar:
                qinfo = quantize(
                    f16, tmp, name, vocab_type="Q8_0" if opts.keep_output_q8 else None,
                    threads=threads_arg(opts.threads),
                )  # fmt: skip
                bar.update(1)
            measured = _measured(tmp, ref, head, f"measure {name}", opts)
            _finish_file(tmp, final, measured)
            _add_file(report, final, name, measured, qinfo)
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def _add_file(report: dict, path: Path, type_name: str, measured: dict, tensors: dict) -> None:
    entry = {
        "file": path.name,
        "type": type_name,
        "bytes": path.stat().st_size,
        **{k: tensors[k] for k in ("tensor_types", "vocab_tensors", "fallback_tensors")},
        **measured,
        "targets": check_targets(type_name, measured),
    }
    report["files"].append(entry)


def _export_lora(opts, inputs: Inputs, ref, quantized, out: Path, report) -> None:
    """The adapter as lora.gguf, measured on --base-gguf (or on a temporary F16 conversion of
    the base), the head as an output-row delta on unused token rows of an untied base."""
    from localguard.backends.llamacpp import lora_gguf
    from localguard.backends.llamacpp.convert import HEAD_KEYS, convert_to_gguf

    head = inputs.head
    final = out / LORA_FILE
    tmp = temporary_name(final)
    base_tmp = out / f".base-{os.getpid()}.gguf"
    try:
        if opts.base_gguf is not None:
            base = Path(opts.base_gguf)
            base_label = str(base)
        elif quantized:
            raise InputError(
                "--lora-only on a quantized MLX base needs --base-gguf (the GGUF base the "
                "LoRA will run on)"
            )
        else:
            bar = _Bar("convert base")
            try:
                convert_to_gguf(inputs.model, base_tmp, outtype="f16", progress=bar)
            finally:
                bar.close()
            base, base_label = base_tmp, f"temporary F16 conversion of {inputs.model}"
        info = lora_gguf.base_info(base)
        if info["architecture"] != read_architecture(inputs.model):
            raise InputError(
                f"{base_label} is a {info['architecture']} model, not "
                f"{read_architecture(inputs.model)} like {inputs.model}"
            )
        delta = None
        meta = head_metadata(head, opts)
        if head is not None:
            if not info["has_output"]:
                raise InputError(f"{base_label} has no output matrix of its own (tied)")
            ids = lora_gguf.unused_token_ids(info["token_types"], len(head.names))
            base_rows = lora_gguf.output_rows(base, ids)
            weight = np.asarray(head.weight, np.float32) * HEAD_ROW_SCALE
            delta = lora_gguf.HeadDelta(
                list(head.names), ids, weight, base_rows, info["output_shape"][0]
            )
            meta.update({
                HEAD_KEYS["names"]: list(head.names),
                HEAD_KEYS["token_ids"]: [int(i) for i in ids],
                HEAD_KEYS["bias"]: [float(b) for b in head.bias],
            })  # fmt: skip
        summary = lora_gguf.write_lora_gguf(
            inputs.model, inputs.adapter, tmp, head=delta, metadata=meta
        )
        report["lora"] = {k: v for k, v in summary.items() if k != "path"}
        report["lora"]["base"] = base_label
        measured = _measured(base, ref, head, "measure LoRA", opts, lora=tmp)
        _finish_file(tmp, final, measured)
        entry = {"file": final.name, "type": "LoRA", "bytes": final.stat().st_size,
                 "on": base_label, **measured}  # fmt: skip
        entry["targets"] = check_targets("LoRA", measured)
        report["files"].append(entry)
    finally:
        tmp.unlink(missing_ok=True)
        base_tmp.unlink(missing_ok=True)


# --- the table ----------------------------------------------------------------------------------


def format_report(report: dict) -> str:
    """The parity table of export.json, one line per file."""
    lines = [
        f"{'file':<22} {'tokens':>9} {'max|dlogit|':>11} {'verdicts':>9} {'(no ties)':>9} "
        f"{'bias shift':>17} {'size':>9}"
    ]
    for f in report["files"]:
        tok = f["tokenization"]
        agree = f.get("verdict_agreement") or {}
        strict, clear = agree.get("all"), agree.get("beyond_ties")
        shift = f.get("bias_shift")
        lines.append(
            f"{f['file']:<22} {tok['equal']:>4}/{tok['total']:<4} {f['max_logit_diff']:>11.4f} "
            f"{(f'{strict:.2%}' if strict is not None else '-'):>9} "
            f"{(f'{clear:.2%}' if clear is not None else '-'):>9} "
            f"{(' '.join(f'{v:+.4f}' for v in shift) if shift else '-'):>17} "
            f"{f['bytes'] / 2**20:>7.1f}MB"
        )
    cal = report["calibration"]
    if cal["source"]:
        agree = report["files"][0].get("verdict_agreement") or {}
        lines.append(
            f"verdicts: {agree.get('units', 0)} (query + response, {agree.get('ties', 0)} within "
            f"{TIE_BAND} of a threshold) on {cal['conversations']} conversations from "
            f"{cal['source']}"
        )
    missed = [
        f"{f['file']} {name}"
        for f in report["files"]
        for name, check in f["targets"].items()
        if not check["met"]
    ]
    lines.append("targets: met" if not missed else f"targets missed: {', '.join(missed)}")
    return "\n".join(lines)
