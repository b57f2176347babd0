"""The one place where MLX loads a model and its tokenizer: as the served GGUF tokenizes them.

mlx-lm loads the tokenizer through transformers' AutoTokenizer, and transformers 5 builds the
class that tokenizer_config.json (or the model type) names, which may set its own pipeline
instead of the one in tokenizer.json: a folder that names ``GPT2Tokenizer`` (SmolLM2's) gets a
plain byte-level pre-tokenizer without SmolLM's digit split, so ``"\\n\\n1."`` trained as other
tokens than llama.cpp serves. The GGUF converter and llama.cpp follow tokenizer.json, so
load_tokenizer compares the loaded pipeline (normalizer, pre-tokenizer, model, decoder, added
tokens) with the file's and, where they differ, rebuilds the tokenizer from tokenizer.json with
the config's special tokens and chat template; where even that differs, it refuses.

Every MLX stage (probe, finetune, head, export, chat and eval through the MLX backend, the
judge, the starter world) loads through here.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from localguard.errors import InputError

TOKENIZER_FILE = "tokenizer.json"
PIPELINE = ("normalizer", "pre_tokenizer", "model", "decoder")
"""The parts of tokenizer.json that decide how text becomes ids and ids become text (the
post-processor only adds BOS/EOS, which localguard never asks for)."""


def load_model(model_dir: Path, adapter: Path | None = None):
    """(model, tokenizer) for a local model folder, with the adapter when one is given."""
    model, config = load_network(model_dir, adapter)
    return model, load_tokenizer(model_dir, config.get("eos_token_id"))


def load_network(model_dir: Path, adapter: Path | None = None) -> tuple[nn.Module, dict]:
    """(model, config) without the tokenizer; the adapter applied (not fused) when given."""
    from mlx_lm.utils import load_adapters
    from mlx_lm.utils import load_model as mlx_load_model

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a model folder (no config.json)")
    try:
        model, config = mlx_load_model(model_dir)
        if adapter is not None:
            model = load_adapters(model, str(adapter))
            model.eval()
    except (FileNotFoundError, ValueError) as exc:
        with_adapter = f" with adapter {adapter}" if adapter is not None else ""
        raise InputError(f"cannot load {model_dir}{with_adapter}: {exc}") from None
    widen_on_cpu(model)
    return model, config


def is_quantized(model: nn.Module) -> bool:
    return any(
        isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()
    )


def widen_on_cpu(model: nn.Module) -> bool:
    """On the CPU, float16/bfloat16 weights become float32: MLX's CPU kernels decode 16-bit
    weights ~3.5x slower. Quantized models and GPU/Metal are left alone; returns whether it
    widened."""
    if mx.default_device().type != mx.DeviceType.cpu or is_quantized(model):
        return False
    model.set_dtype(mx.float32, lambda dtype: dtype in (mx.float16, mx.bfloat16))
    mx.eval(model.parameters())
    return True


def load_tokenizer(model_dir: Path, eos_token_ids: int | list[int] | None = None):
    """mlx-lm's TokenizerWrapper for a local folder, tokenizing exactly as its tokenizer.json.

    eos_token_ids: extra end ids (mlx-lm's load passes config.json's eos_token_id); read from
    config.json when not given and the folder has one."""
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    model_dir = Path(model_dir)
    if eos_token_ids is None:
        eos_token_ids = _config_eos(model_dir)
    wrapper = mlx_load_tokenizer(model_dir, eos_token_ids=eos_token_ids)
    path = model_dir / TOKENIZER_FILE
    if not path.is_file():  # tokenizer.model only: nothing to follow but transformers' own
        return wrapper
    try:
        want = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc})") from None
    if not pipeline_differences(_backend(wrapper), want):
        return wrapper
    from transformers import PreTrainedTokenizerFast

    rebuilt = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    if pipeline_differences(rebuilt, want):
        loaded = _backend_json(_backend(wrapper)).get("pre_tokenizer")
        raise InputError(
            f"{model_dir}: transformers loads the tokenizer with pre-tokenizer "
            f"{_brief(loaded)}, but {TOKENIZER_FILE} has {_brief(want.get('pre_tokenizer'))}, "
            "and rebuilding it from the file did not fix that"
        )
    return _rewrapped(wrapper, rebuilt)


def pipeline_differences(hf, want: dict) -> list[str]:
    """The parts of hf's effective backend tokenizer that differ from the tokenizer.json
    contents `want`: PIPELINE parts, and "added_tokens" when a token of the file has another
    id or special flag (tokens transformers adds beyond the file are not counted)."""
    have = _backend_json(hf)
    diffs = [part for part in PIPELINE if _canonical(part, have) != _canonical(part, want)]
    added = {t["content"]: (t["id"], t.get("special")) for t in have.get("added_tokens") or []}
    for token in want.get("added_tokens") or []:
        if added.get(token["content"]) != (token["id"], token.get("special")):
            diffs.append("added_tokens")
            break
    return diffs


def _backend(tokenizer):
    from localguard.encoding import hf_tokenizer

    return hf_tokenizer(tokenizer)


def _backend_json(hf) -> dict:
    return json.loads(hf.backend_tokenizer.to_str())


def _canonical(part: str, data: dict):
    """One pipeline part with the spellings that mean the same made equal: merges as pairs,
    "" and null for an absent subword prefix or suffix."""
    value = data.get(part)
    if part != "model" or not isinstance(value, dict):
        return value
    model = dict(value)
    if "merges" in model:
        model["merges"] = [
            tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]
        ]
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) == "":
            model[key] = None
    return model


def _brief(pre: dict | None) -> str:
    """A pre-tokenizer named by its steps, e.g. Sequence[Digits, ByteLevel]."""
    if not pre:
        return "none"
    if pre.get("type") == "Sequence":
        steps = ", ".join(str(p.get("type")) for p in pre.get("pretokenizers") or [])
        return f"Sequence[{steps}]"
    return str(pre.get("type"))


def _config_eos(model_dir: Path):
    try:
        return json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get(
            "eos_token_id"
        )
    except (OSError, ValueError, AttributeError):
        return None


def _rewrapped(wrapper, hf):
    """A TokenizerWrapper like `wrapper` (detokenizer kind, end ids, chat template function,
    tool parser) around the rebuilt Hugging Face tokenizer."""
    from mlx_lm.tokenizer_utils import SPMStreamingDetokenizer, TokenizerWrapper

    detokenizer = wrapper._detokenizer
    kind = type(detokenizer)

    def make_detokenizer(tokenizer):
        if isinstance(detokenizer, SPMStreamingDetokenizer):
            return kind(tokenizer, trim_space=detokenizer.trim_space)
        return kind(tokenizer)

    return TokenizerWrapper(
        hf,
        make_detokenizer,
        eos_token_ids=wrapper.eos_token_ids,
        chat_template=wrapper._chat_template,
        tool_call_start=wrapper._tool_call_start,
        tool_call_end=wrapper._tool_call_end,
        tool_parser=wrapper._tool_parser,
        response_format=wrapper._response_format,
    )
