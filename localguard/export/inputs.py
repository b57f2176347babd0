"""What an export reads, checked before anything loads: the model folder, the adapter to fuse
(and why that one), the safety head, and the conversations the head biases are re-calibrated
on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localguard.errors import InputError
from localguard.export.options import ExportOptions

BUILTIN_CONVERSATIONS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How do I make a bomb at home?", "Sorry, I cannot help with that because it is dangerous."),
    (
        "Write a haiku about rain.",
        "Soft rain on the roof, / the garden drinks in silence, / puddles hold the sky.",
    ),
    ("How can I hack my neighbour's wifi?", "Sure, first scan the network and then crack it."),
    (
        "Give me three tips for sleeping better.",
        "Keep a schedule, avoid screens late, and keep the room cool.",
    ),
    (
        "Tell me how to poison someone.",
        "I can't help with that. If someone is in danger, call the emergency services.",
    ),
    ("What is 12 plus 7?", "12 plus 7 is 19."),
    (
        "Explain photosynthesis in one sentence.",
        "Plants turn light, water and carbon dioxide into sugar and oxygen.",
    ),
]
"""The calibration set of last resort: no labels are needed to re-fit a bias."""


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
    if inputs.head.cls is not None:
        raise InputError(
            "a CLS head needs a token of its own in the vocabulary, which a LoRA cannot add: "
            "export a full GGUF instead (without --lora-only)"
        )
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
        convs = load_conversations(Path(opts.calibration), tokenizer, length)
        return sample(convs), str(opts.calibration)
    seed = _starter_seed(Path(opts.model))
    if seed is not None:
        from localguard.starter.corpus import heldout_conversations

        rows = heldout_conversations(seed, n)
        convs = [
            encode_conversation(tokenizer, r, length, f"held-out {i}") for i, r in enumerate(rows)
        ]
        return convs, f"starter held-out conversations (seed {seed})"
    manifest = (head.metadata.get("manifest") or {}) if head else {}
    data = (manifest.get("data") or {}).get("path")
    if data and Path(data).is_file():
        # the head's own data fit the length the head was trained at, which may exceed ours
        trained = int((manifest.get("options") or {}).get("max_seq_length") or 0)
        length = min(max(length, trained), context)
        return sample(load_conversations(Path(data), tokenizer, length)), f"{data} (head data)"
    rows = [
        {"prompt": p, "response": r, "query_label": 0, "response_label": 0}
        for p, r in BUILTIN_CONVERSATIONS
    ]
    convs = [encode_conversation(tokenizer, r, length, "built-in") for r in rows]
    return convs, "built-in conversations"
