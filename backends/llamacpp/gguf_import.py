"""A GGUF file as a Hugging Face model folder that mlx_lm.load takes: the inverse of convert.py
(numpy, gguf-py and tokenizers; no MLX, no llama.cpp).

Users run a GGUF in llama.cpp; fine-tuning that very model needs it back in Hugging Face layout:

- weights: every tensor dequantized with gguf-py (F32, F16, BF16, the legacy and K-quants and
  whatever else gguf-py decodes), the exporter's per-architecture fix undone (llama's q/k row
  order for interleaved rope, Gemma's norm weights + 1), the tied embedding kept tied;
- config.json: the exporter's hyperparameter table (convert.COMMON_HPARAMS) read backwards plus
  each architecture's own keys, rope scaling from the scaling keys or the rope factor tensors;
  the result is checked by running the exporter's own hparams writer on it, which must give the
  file's values back;
- tokenizer.json and tokenizer_config.json from the vocabulary (gguf_tokenizer.py);
- provenance: config.json's `localguard_import` section keeps the file's general.* keys with
  their GGUF value types and its tokenizer switches (gguf_keys.TOKENIZER_FLAGS, as the file has
  them), which the exporter writes back (convert.py).

The architectures are the exporter's (convert.ARCHITECTURES): a llama.cpp architecture that
several model types share ("llama": Llama and Mistral) imports as the first of them. Safety-head
rows that localguard's export appended are dropped again.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from localguard.backends.llamacpp.convert import (
    ARCHITECTURES,
    COMMON_HPARAMS,
    GEMMA3_SWA_PATTERN,
    IMPORT_SECTION,
    architecture,
    llama3_rope_factors,
)
from localguard.backends.llamacpp.gguf_keys import (
    GENERAL_PREFIX,
    HEAD_CLS_TOKEN,
    HEAD_TOKEN_IDS,
    TOKENIZER_FLAGS,
)
from localguard.backends.llamacpp.gguf_tokenizer import (
    GGUFVocab,
    build_tokenizer,
    read_vocab,
    resized,
    special_tokens_map,
    tokenizer_config,
)
from localguard.errors import InputError

DTYPES = ("auto", "float32", "float16", "bfloat16")
EXPLICIT_HEAD_DIM = frozenset({"qwen3", "gemma3_text"})
"""Model types whose mlx-lm class needs head_dim in config.json even where the file leaves the
key length to llama.cpp's default (hidden / heads); the others get head_dim only from the file."""

Progress = Callable[[int, int, str], None]
"""progress(tensors_done, tensors_total, hf_tensor_name), called after each tensor."""

_ROPE_TENSORS = {
    gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
    gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight",
    gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight",
}
_VOCAB_TENSORS = ("token_embd.weight", "output.weight")
_FLOAT_SOURCES = {"F32", "F16", "BF16"}


# --- per-architecture inverse -------------------------------------------------------------


def _unpermute_rows_for_rope(data: np.ndarray, n_heads: int) -> np.ndarray:
    """Per head, [x0, y0, x1, y1, ..] -> [x0.., y0..]: convert.permute_rows_for_rope undone."""
    shape = data.shape
    return (
        data.reshape(n_heads, shape[0] // n_heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


def _llama_unfix(name: str, data: np.ndarray, config: dict) -> np.ndarray:
    if ".self_attn.q_proj." in name:
        return _unpermute_rows_for_rope(data, config["num_attention_heads"])
    if ".self_attn.k_proj." in name:
        return _unpermute_rows_for_rope(data, config["num_key_value_heads"])
    return data


def _gemma3_unfix(name: str, data: np.ndarray, config: dict) -> np.ndarray:
    return data - 1.0 if name.endswith("norm.weight") else data


def _keep(name: str, data: np.ndarray, config: dict) -> np.ndarray:
    return data


def _silu(get: Callable[[str], object], config: dict) -> dict:
    return {"hidden_act": "silu"}


def _qwen_extras(get: Callable[[str], object], config: dict) -> dict:
    return {"hidden_act": "silu", "use_sliding_window": False, "sliding_window": None}


def _gemma3_extras(get: Callable[[str], object], config: dict) -> dict:
    """Gemma 3's fixed layer pattern, local rope base, window and attention scale, as the
    exporter's check_gemma3 requires them."""
    n = int(config["num_hidden_layers"])
    window = get(gguf.Keys.Attention.SLIDING_WINDOW)
    if window is None:
        raise InputError("Gemma 3 without gemma3.attention.sliding_window is not supported")
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    out = {
        "hidden_activation": "gelu_pytorch_tanh",
        "rope_local_base_freq": float(get(gguf.Keys.Rope.FREQ_BASE_SWA) or 10000.0),
        "sliding_window": int(window),
        "sliding_window_pattern": GEMMA3_SWA_PATTERN,
        "layer_types": [
            "full_attention" if (i + 1) % GEMMA3_SWA_PATTERN == 0 else "sliding_attention"
            for i in range(n)
        ],
        "query_pre_attn_scalar": hidden // heads if n == 62 else config["head_dim"],
        "final_logit_softcapping": get(gguf.Keys.LLM.FINAL_LOGIT_SOFTCAPPING),
        "attn_logit_softcapping": None,
        "rope_scaling": config.get("rope_scaling"),
    }
    return out


def _phi3_extras(get: Callable[[str], object], config: dict) -> dict:
    original = get(gguf.Keys.Rope.SCALING_ORIG_CTX_LEN) or config["max_position_embeddings"]
    window = get(gguf.Keys.Attention.SLIDING_WINDOW)
    return {
        "hidden_act": "silu",
        "original_max_position_embeddings": int(original),
        "sliding_window": None if window is None else int(window),
    }


_LLAMA_NAMES = (
    "model.embed_tokens",
    "lm_head",
    "model.norm",
    "model.layers.{bid}.input_layernorm",
    "model.layers.{bid}.post_attention_layernorm",
    "model.layers.{bid}.self_attn.q_proj",
    "model.layers.{bid}.self_attn.k_proj",
    "model.layers.{bid}.self_attn.v_proj",
    "model.layers.{bid}.self_attn.o_proj",
    "model.layers.{bid}.mlp.gate_proj",
    "model.layers.{bid}.mlp.up_proj",
    "model.layers.{bid}.mlp.down_proj",
)
_QK_NORM = ("model.layers.{bid}.self_attn.q_norm", "model.layers.{bid}.self_attn.k_norm")


@dataclass(frozen=True)
class ImportArch:
    """How one model_type of the exporter's table comes back from its llama.cpp form."""

    hf_class: str
    tensor_names: tuple[str, ...]  # Hugging Face names without .weight/.bias, {bid}: layer
    extras: Callable[[Callable[[str], object], dict], dict]  # (metadata getter, config) -> keys
    unfix: Callable[[str, np.ndarray, dict], np.ndarray]  # the exporter's fix_tensor undone


IMPORT_ARCHITECTURES: dict[str, ImportArch] = {
    "llama": ImportArch("LlamaForCausalLM", _LLAMA_NAMES, _silu, _llama_unfix),
    "mistral": ImportArch("MistralForCausalLM", _LLAMA_NAMES, _silu, _llama_unfix),
    "qwen2": ImportArch("Qwen2ForCausalLM", _LLAMA_NAMES, _qwen_extras, _keep),
    "qwen3": ImportArch("Qwen3ForCausalLM", _LLAMA_NAMES + _QK_NORM, _qwen_extras, _keep),
    "gemma3_text": ImportArch(
        "Gemma3ForCausalLM",
        _LLAMA_NAMES
        + _QK_NORM
        + (
            "model.layers.{bid}.pre_feedforward_layernorm",
            "model.layers.{bid}.post_feedforward_layernorm",
        ),
        _gemma3_extras,
        _gemma3_unfix,
    ),
    "phi3": ImportArch(
        "Phi3ForCausalLM",
        (
            "model.embed_tokens",
            "lm_head",
            "model.norm",
            "model.layers.{bid}.input_layernorm",
            "model.layers.{bid}.post_attention_layernorm",
            "model.layers.{bid}.self_attn.qkv_proj",
            "model.layers.{bid}.self_attn.o_proj",
            "model.layers.{bid}.mlp.gate_up_proj",
            "model.layers.{bid}.mlp.down_proj",
        ),
        _phi3_extras,
        _keep,
    ),
}
"""The importer's side of convert.ARCHITECTURES (same keys)."""


def model_types() -> dict[str, str]:
    """llama.cpp architecture name -> the model_type it imports as (the exporter's first)."""
    out: dict[str, str] = {}
    for model_type, arch in ARCHITECTURES.items():
        out.setdefault(gguf.MODEL_ARCH_NAMES[arch.gguf_arch], model_type)
    return out


def tensor_names(model_type: str, n_layers: int) -> dict[str, str]:
    """GGUF tensor name (without .weight/.bias) -> Hugging Face name, through the same gguf-py
    name map the exporter uses."""
    names = gguf.get_tensor_name_map(ARCHITECTURES[model_type].gguf_arch, n_layers)
    out = {}
    for template in IMPORT_ARCHITECTURES[model_type].tensor_names:
        layers = range(n_layers) if "{bid}" in template else [None]
        for bid in layers:
            hf = template.format(bid=bid)
            name = names.get_name(hf)
            if name is None:
                raise RuntimeError(f"gguf-py has no {model_type} tensor for {hf}")
            out[name] = hf
    return out


# --- reading ------------------------------------------------------------------------------


def read_gguf(path: Path):
    """gguf-py's reader and the metadata as Python values; a damaged file is one InputError."""
    from localguard.backends.llamacpp.gguf_runtime import open_gguf

    reader = open_gguf(path)
    try:
        fields = {key: field.contents() for key, field in reader.fields.items()}
        tensors = list(reader.tensors)
    except (ValueError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable GGUF file ({exc})") from None
    return reader, fields, tensors


def _shape(tensor) -> tuple[int, ...]:
    """numpy (row-major) shape of a GGUF tensor: GGUF lists the row length first."""
    return tuple(int(d) for d in reversed(tensor.shape))


def _dequantized(tensor, where: str) -> np.ndarray:
    """The tensor as float32 in numpy layout; a type gguf-py cannot decode is an error."""
    qtype = tensor.tensor_type
    try:
        data = gguf.quants.dequantize(np.asarray(tensor.data), qtype)
    except NotImplementedError:
        raise InputError(
            f"{where}: tensor {tensor.name} has type {qtype.name}, which cannot be dequantized"
        ) from None
    except (ValueError, IndexError) as exc:
        raise InputError(f"{where}: tensor {tensor.name} is damaged ({exc})") from None
    return np.asarray(data, np.float32).reshape(_shape(tensor))


# --- config -------------------------------------------------------------------------------


def _scalar(where: str, key: str, value):
    if isinstance(value, list):
        raise InputError(f"{where}: per-layer values of {key} are not supported")
    return value


def build_config(
    fields: dict, tensors: dict, model_type: str, n_vocab: int, vocab: GGUFVocab, where: str
) -> dict:
    """config.json for the file: hyperparameters, rope scaling, tied output, special ids."""
    arch_name = fields["general.architecture"]

    def get(key: str):
        return _scalar(where, key, fields.get(key.format(arch=arch_name)))

    if get(gguf.Keys.LLM.EXPERT_COUNT):
        raise InputError(f"{where}: mixture-of-experts {arch_name} models cannot be imported")
    values = {p.key: get(p.key) for p in COMMON_HPARAMS}
    required = [gguf.Keys.LLM.EMBEDDING_LENGTH, gguf.Keys.LLM.BLOCK_COUNT]
    required += [gguf.Keys.LLM.FEED_FORWARD_LENGTH, gguf.Keys.Attention.HEAD_COUNT]
    missing = [k.format(arch=arch_name) for k in required if values[k] is None]
    if missing:
        raise InputError(f"{where}: metadata lacks {', '.join(missing)}")
    hidden, heads = int(values[required[0]]), int(values[gguf.Keys.Attention.HEAD_COUNT])
    defaults = {
        gguf.Keys.LLM.CONTEXT_LENGTH: 2048,
        gguf.Keys.Attention.HEAD_COUNT_KV: heads,
        gguf.Keys.Attention.LAYERNORM_RMS_EPS: 1e-5,
        gguf.Keys.Attention.KEY_LENGTH: hidden // heads,
        gguf.Keys.Rope.FREQ_BASE: 10000.0,
    }
    info = IMPORT_ARCHITECTURES[model_type]
    config: dict = {"architectures": [info.hf_class], "model_type": model_type}
    for param in COMMON_HPARAMS:
        value = values[param.key]
        value = defaults.get(param.key) if value is None else value
        if param.config_key is not None and value is not None:
            config[param.config_key] = param.kind(value)
    config["rms_norm_eps"] = _f32(config["rms_norm_eps"])
    config["rope_theta"] = _f32(config["rope_theta"])
    head_dim = config["head_dim"]
    value_dim = values[gguf.Keys.Attention.VALUE_LENGTH]
    if value_dim is not None and int(value_dim) != head_dim:
        raise InputError(f"{where}: key length {head_dim} differs from value length {value_dim}")
    rope_dims = values[gguf.Keys.Rope.DIMENSION_COUNT]
    if model_type == "phi3":
        config.pop("head_dim")  # Phi-3's head size is always hidden / heads
        head_dim = hidden // heads
    if rope_dims is not None and int(rope_dims) != head_dim:
        config["partial_rotary_factor"] = int(rope_dims) / head_dim
    config["vocab_size"] = int(n_vocab)
    config["tie_word_embeddings"] = "output.weight" not in tensors
    if any(n.endswith(".attn_q.bias") for n in tensors) and model_type in ("llama", "mistral"):
        config["attention_bias"] = True
    if any(n.endswith(".ffn_up.bias") for n in tensors) and model_type in ("llama", "mistral"):
        config["mlp_bias"] = True
    scaling = _rope_scaling(get, tensors, config, model_type, where)
    if scaling is not None:
        config["rope_scaling"] = scaling
    try:
        config.update(info.extras(get, config))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    if values[gguf.Keys.Attention.KEY_LENGTH] is None and model_type not in EXPLICIT_HEAD_DIM:
        config.pop("head_dim", None)  # as the source config lacked it (the exporter's rule)
    eos = [vocab.special[k] for k in ("eos", "eot", "eom") if k in vocab.special]
    eos = list(dict.fromkeys(eos))
    for kind, key in (("bos", "bos_token_id"), ("pad", "pad_token_id")):
        if kind in vocab.special:
            config[key] = vocab.special[kind]
    if eos:
        config["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    try:
        architecture(config)  # the exporter must take what the importer writes
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return config


def _f32(value: float) -> float:
    """A FLOAT32 metadata value as the shortest decimal that is that float32 (1e-05, not
    9.999999747378752e-06)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def _rope_scaling(get, tensors: dict, config: dict, model_type: str, where: str) -> dict | None:
    """rope scaling from the scaling keys (linear, and whatever else the exporter then refuses
    by name) or from the rope factor tensors (Llama 3.x, Phi-3 longrope)."""
    kind = get(gguf.Keys.Rope.SCALING_TYPE)
    if "rope_freqs.weight" in tensors:
        if model_type not in ("llama", "mistral"):
            raise InputError(f"{where}: rope_freqs in a {model_type} model is not supported")
        factors = _dequantized(tensors["rope_freqs.weight"], where)
        return llama3_scaling(factors, config, where)
    if "rope_factors_long.weight" in tensors:
        if model_type != "phi3":
            raise InputError(f"{where}: rope factor tensors in {model_type} are not supported")
        long = _dequantized(tensors["rope_factors_long.weight"], where)
        short_tensor = tensors.get("rope_factors_short.weight")
        short = long if short_tensor is None else _dequantized(short_tensor, where)
        return {
            "type": "longrope",
            "long_factor": [_f32(x) for x in long],
            "short_factor": [_f32(x) for x in short],
        }
    if kind in (None, "none"):
        return None
    factor = get(gguf.Keys.Rope.SCALING_FACTOR)
    out = {"rope_type": str(kind), "type": str(kind)}
    if factor is not None:
        out["factor"] = _f32(factor)
    return out


def llama3_scaling(factors: np.ndarray, config: dict, where: str) -> dict | None:
    """Llama 3.x rope scaling parameters that give back the rope_freqs tensor: the inverse of
    convert.llama3_rope_factors. The usual low/high frequency factors (1, 4) are tried first,
    then a fit of both; what reproduces the tensor (to 1e-5) is kept."""
    factors = np.asarray(factors, np.float64)
    factor = float(np.float32(factors.max()))
    if factor <= 1.0 + 1e-6:
        return None
    dim, theta = int(config["head_dim"]), float(config["rope_theta"])
    wavelen = 2 * math.pi * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if len(factors) != len(wavelen):
        raise InputError(f"{where}: rope_freqs has {len(factors)} values, not {len(wavelen)}")
    between = (factors > 1 + 1e-6) & (factors < factor - 1e-6)
    smooth = (1 / factors - 1 / factor) / (1 - 1 / factor)
    candidates = []
    low, high = 1.0, 4.0  # Llama 3.1 and 3.2; smooth = (old / wavelen - low) / (high - low)
    if between.any():
        old = np.median(wavelen[between] * (smooth[between] * (high - low) + low))
        candidates.append((low, high, float(old)))
    else:  # any context between the last unscaled and the first fully scaled frequency
        lo = wavelen[factors <= 1 + 1e-6].max(initial=0.0) * high
        hi = wavelen[factors >= factor - 1e-6].min(initial=np.inf) * low
        if lo < hi:
            candidates.append((low, high, math.sqrt(lo * hi) if math.isfinite(hi) else lo * 2))
    if between.sum() >= 2:  # smooth = a / wavelen - b with a = old / (high - low), low = 1
        a, minus_b = np.polyfit(1 / wavelen[between], smooth[between], 1)
        if minus_b < 0 and a > 0:
            high = 1 - 1 / minus_b
            candidates.append((1.0, float(high), float(a * (high - 1))))
    for low, high, old in candidates:
        scaling = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": float(low),
            "high_freq_factor": float(high),
            "original_max_position_embeddings": int(round(old)),
        }
        again = llama3_rope_factors({**config, "rope_scaling": scaling})
        if again is not None and np.allclose(again, factors, rtol=1e-5, atol=1e-6):
            return scaling
    raise InputError(f"{where}: rope_freqs does not match Llama 3 rope scaling")


def hparam_mismatches(fields: dict, model_type: str, config: dict) -> list[str]:
    """The hyperparameter keys where the exporter, given this config, would write another value
    than the file has (empty: the config is the file's exact inverse)."""
    arch = ARCHITECTURES[model_type]
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
    arch.hparams(writer, config)
    out = []
    for key, written in writer.kv_data[0].items():
        have = fields.get(key)
        if have is None:
            continue
        same = (
            np.float32(have) == np.float32(written.value)
            if isinstance(written.value, float)
            else have == written.value
        )
        if not same:
            out.append(f"{key}: file {have!r}, config gives {written.value!r}")
    return out


# --- writing ------------------------------------------------------------------------------


_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _encode(data: np.ndarray, dtype: str) -> bytes:
    """float32 data in the output dtype (bfloat16 rounded to nearest even)."""
    if dtype == "float32":
        return np.ascontiguousarray(data, np.float32).tobytes()
    if dtype == "float16":
        return np.ascontiguousarray(data.astype(np.float16)).tobytes()
    bits = np.ascontiguousarray(data, np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).tobytes()


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its Hugging Face name, shape, and how to compute its float32 data."""

    name: str
    shape: tuple[int, ...]
    make: Callable[[], np.ndarray]


def write_safetensors(
    path: Path, plan: list[PlannedTensor], dtype: str, progress: Progress | None = None
) -> None:
    """One safetensors file written tensor by tensor: the header first (every shape is known),
    then each tensor computed just before it is written, so memory stays near one tensor."""
    itemsize = 4 if dtype == "float32" else 2
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in plan:
        size = math.prod(t.shape) * itemsize
        header[t.name] = {
            "dtype": _ST_DTYPES[dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for done, t in enumerate(plan, 1):
            data = t.make()
            if data.shape != t.shape:
                raise RuntimeError(f"{t.name}: made {data.shape}, planned {t.shape}")
            fh.write(_encode(data, dtype))
            if progress is not None:
                progress(done, len(plan), t.name)


def _head_rows(fields: dict, n_tokens: int) -> int:
    """How many trailing vocabulary rows are a localguard safety head, its CLS token included
    (0 when none)."""
    ids = fields.get(HEAD_TOKEN_IDS)
    if not ids:
        return 0
    cls = fields.get(HEAD_CLS_TOKEN)
    ids = sorted([int(i) for i in ids] + ([] if cls is None else [int(cls)]))
    return len(ids) if ids == list(range(n_tokens - len(ids), n_tokens)) else 0


def choose_dtype(dtype: str, tensors: list, model_type: str) -> str:
    """auto: float32 when every matrix is F32 (nothing to round), bfloat16 for BF16 sources and
    Gemma 3 (whose activations overflow float16), float16 otherwise."""
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    matrices = {t.tensor_type.name for t in tensors if len(t.shape) >= 2}
    if matrices <= {"F32"}:
        return "float32"
    if "BF16" in matrices or model_type == "gemma3_text":
        return "bfloat16"
    return "float16"


def import_gguf(
    path: Path,
    out_dir: Path,
    *,
    dtype: str = "auto",
    source: dict | None = None,
    progress: Progress | None = None,
) -> dict:
    """Write the Hugging Face folder for one GGUF file into out_dir (which must exist and be
    empty or new; the caller stages and renames it).

    source: extra provenance for config.json's localguard_import section (e.g. the sha256).
    Returns a summary: architecture, model_type, dtype, vocabulary, tensor types, special ids,
    the hyperparameters the config does not reproduce (empty when exact).
    """
    path, out_dir = Path(path), Path(out_dir)
    where = path.name
    reader, fields, tensor_list = read_gguf(path)
    arch_name = fields.get("general.architecture")
    types = model_types()
    if arch_name not in types:
        raise InputError(
            f"{where}: architecture {arch_name!r} cannot be imported "
            f"(supported: {', '.join(types)})"
        )
    model_type = types[arch_name]
    tensors = {t.name: t for t in tensor_list}
    if "token_embd.weight" not in tensors:
        raise InputError(f"{where}: no token_embd.weight tensor")
    for t in tensor_list:  # every type decodable before anything is written
        if t.tensor_type.name not in _FLOAT_SOURCES:
            _dequantized_first_row(t, where)
    vocab = read_vocab(fields, where)
    rows = _shape(tensors["token_embd.weight"])[0]
    if len(vocab) > rows:
        raise InputError(f"{where}: {len(vocab)} tokens but the embedding has {rows} rows")
    dropped = _head_rows(fields, len(vocab)) if len(vocab) == rows else 0
    n_vocab = rows - dropped
    vocab = resized(vocab, n_vocab)
    config = build_config(fields, tensors, model_type, n_vocab, vocab, where)
    try:
        mismatches = hparam_mismatches(fields, model_type, config)
    except InputError as exc:  # the exporter refuses this config: so does the importer
        raise InputError(f"{where}: {exc}") from None
    dtype = choose_dtype(dtype, tensor_list, model_type)
    config["torch_dtype"] = dtype
    general = {k: v for k, v in fields.items() if k.startswith(GENERAL_PREFIX)}
    counts = Counter(t.tensor_type.name for t in tensor_list)
    config[IMPORT_SECTION] = {
        "gguf_file": path.name,
        **(source or {}),
        "general": general,
        "general_types": {k: [t.name for t in reader.fields[k].types] for k in general},
        "tensor_types": dict(sorted(counts.items())),
        "tokenizer": {
            "model": vocab.model,
            "pre": vocab.pre,
            "flags": {k: bool(fields[k]) for k in TOKENIZER_FLAGS if k in fields},
        },
    }
    plan = plan_tensors(tensors, model_type, config, n_vocab, where)
    write_safetensors(out_dir / "model.safetensors", plan, dtype, progress)
    tokenizer, renamed = build_tokenizer(vocab)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_json(
        out_dir / "tokenizer_config.json",
        tokenizer_config(vocab, config["max_position_embeddings"]),
    )
    _write_json(out_dir / "special_tokens_map.json", special_tokens_map(vocab))
    generation = {
        k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config
    }
    _write_json(out_dir / "generation_config.json", generation)
    _write_json(out_dir / "config.json", config)
    return {
        "architecture": arch_name,
        "model_type": model_type,
        "dtype": dtype,
        "n_vocab": n_vocab,
        "n_tensors": len(plan),
        "tied_embeddings": config["tie_word_embeddings"],
        "rope_scaling": config.get("rope_scaling"),
        "tensor_types": dict(sorted(counts.items())),
        "tokenizer": vocab.model,
        "pre_tokenizer": vocab.pre,
        "add_bos": vocab.add_bos,
        "special_ids": dict(vocab.special),
        "chat_template": vocab.chat_template is not None,
        "head_rows_dropped": dropped,
        "duplicate_tokens_renamed": renamed,
        "hparam_mismatches": mismatches,
    }


def _dequantized_first_row(tensor, where: str) -> None:
    """Decode one row, so an unsupported type is refused before anything is written."""
    data = np.asarray(tensor.data)
    try:
        gguf.quants.dequantize(data.reshape(-1, data.shape[-1])[:1], tensor.tensor_type)
    except NotImplementedError:
        raise InputError(
            f"{where}: tensor {tensor.name} has type {tensor.tensor_type.name}, "
            "which cannot be dequantized"
        ) from None
    except (ValueError, IndexError) as exc:
        raise InputError(f"{where}: tensor {tensor.name} is damaged ({exc})") from None


def plan_tensors(
    tensors: dict, model_type: str, config: dict, n_vocab: int, where: str
) -> list[PlannedTensor]:
    """Every Hugging Face tensor with its name, shape and computation (rope tensors became
    config keys; the vocabulary matrices lose any safety-head rows)."""
    inverse = tensor_names(model_type, int(config["num_hidden_layers"]))
    unfix = IMPORT_ARCHITECTURES[model_type].unfix
    plan = []
    for name, tensor in tensors.items():
        if name in _ROPE_TENSORS:
            continue
        base, _, suffix = name.rpartition(".")
        if suffix not in ("weight", "bias") or base not in inverse:
            raise InputError(f"{where}: tensor {name} has no {model_type} equivalent")
        hf_name = f"{inverse[base]}.{suffix}"
        shape = _shape(tensor)
        if name in _VOCAB_TENSORS:
            shape = (n_vocab, *shape[1:])

        def make(t=tensor, hf=hf_name, rows=shape[0], cut=name in _VOCAB_TENSORS) -> np.ndarray:
            data = _dequantized(t, where)
            return unfix(hf, data[:rows] if cut else data, config)

        plan.append(PlannedTensor(hf_name, shape, make))
    return plan


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
