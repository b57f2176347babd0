"""A GGUF model in llama.cpp, through llama-cpp-python's low-level API: logits at every position,
the safety head's rows read from them, and those rows masked so they are never sampled.

llama-cpp-python's high-level `Llama` cannot rewind its KV cache mid-generation and silently
drops `logit_bias` when a logits processor is given too, so localguard drives the context
itself: one sequence, tokens fed in batches, logits copied out per position, KV positions
removed on request. The head is described by the file's `localguard.*` metadata (see
backends/llamacpp/convert.py): which token ids carry its rows, the scale the rows were
stored at, their biases (llama.cpp has no output bias) and thresholds; a LoRA adapter file may
carry its own (`--lora-only` exports). Output k is logits[token_ids[k]] / scale[k] + bias[k].

    with GGUFModel("model-Q4_K_M.gguf") as llm:
        logits = llm.eval(ids)              # (len(ids), n_vocab) raw, head rows included
        scores = llm.head.logits(logits)    # (len(ids), K) calibrated log-odds
        sample_from = llm.masked(logits[-1])  # head rows at -inf
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localguard.backends.llamacpp.extra_buffers import extra_buffer_types_safe
from localguard.backends.llamacpp.gguf_keys import (
    GUARD_REFUSAL_PREFIX,
    GUARD_TAU,
    HEAD_BIAS,
    HEAD_BIAS_SHIFT,
    HEAD_CLS_RULE,
    HEAD_CLS_TOKEN,
    HEAD_NAMES,
    HEAD_ROW_KEYS,
    HEAD_SCALE,
    HEAD_THRESHOLDS,
    HEAD_TOKEN_IDS,
    KEY_PREFIX,
)
from localguard.errors import InputError

_backend_ready = False


def _init_backend() -> None:
    """Load llama.cpp once, with its log lines at error level only."""
    global _backend_ready
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


# --- metadata -------------------------------------------------------------------------------


def read_metadata(path: Path, prefix: str = KEY_PREFIX, keys: tuple[str, ...] = ()) -> dict:
    """The GGUF file's metadata keys that start with prefix (and the keys named), as Python
    values; a file gguf-py cannot parse is one InputError."""
    return metadata(open_gguf(path), prefix, keys)


def metadata(reader, prefix: str = KEY_PREFIX, keys: tuple[str, ...] = ()) -> dict:
    """read_metadata on a gguf-py reader that is already open."""
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith(prefix) or k in keys}


def open_gguf(path: Path):
    """gguf-py's reader for a file; a missing or unparsable file is one InputError."""
    import gguf

    path = Path(path)
    try:
        return gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: no such GGUF file") from None
    except (OSError, ValueError, IndexError, KeyError, AssertionError) as exc:
        raise InputError(f"{path} is not a readable GGUF file ({exc})") from None


@dataclass(frozen=True)
class HeadSpec:
    """The safety head as a GGUF file describes it: output k is
    logits[token_ids[k]] / scale[k] + bias[k], flagged when >= thresholds[k]."""

    names: list[str]
    token_ids: list[int]
    bias: np.ndarray
    thresholds: np.ndarray | None = None
    bias_shift: np.ndarray | None = None
    scale: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def tau(self) -> int | None:
        """The guard's consecutive-unsafe-steps setting the file was exported with."""
        value = self.extra.get(GUARD_TAU)
        return None if value is None else int(value)

    @property
    def refusal_prefix(self) -> str | None:
        return self.extra.get(GUARD_REFUSAL_PREFIX)

    @property
    def cls_token(self) -> int | None:
        """A CLS head's token id (its rows are read from that token's logits), else None."""
        value = self.extra.get(HEAD_CLS_TOKEN)
        return None if value is None else int(value)

    @property
    def cls_rule(self) -> tuple[int, int, int]:
        """A CLS head's windows (r1, r2, r3)."""
        return tuple(int(r) for r in self.extra[HEAD_CLS_RULE])

    def index(self, name: str) -> int:
        if name not in self.names:
            raise InputError(f"the head has no output {name!r}; it has {', '.join(self.names)}")
        return self.names.index(name)

    def raw(self, logits: np.ndarray) -> np.ndarray:
        """(..., K) head logits without bias (scale undone) from raw logits (..., n_vocab)."""
        rows = np.asarray(logits)[..., self.token_ids].astype(np.float64)
        return rows if self.scale is None else rows / self.scale

    def logits(self, logits: np.ndarray) -> np.ndarray:
        """(..., K) calibrated head logits from raw logits of shape (..., n_vocab)."""
        return self.raw(logits) + self.bias

    def flags(self, logits: np.ndarray) -> np.ndarray:
        """(..., K) verdicts (True: unsafe) from raw logits."""
        if self.thresholds is None:
            raise InputError("this GGUF file's head has no thresholds")
        return self.logits(logits) >= self.thresholds


def head_from_metadata(meta: dict, where: str = "GGUF file") -> HeadSpec | None:
    """The HeadSpec in localguard.* metadata, None when there is no head; a partial or
    inconsistent head is an error."""
    if HEAD_NAMES not in meta:
        return None
    try:
        names = [str(n) for n in meta[HEAD_NAMES]]
        ids = [int(i) for i in meta[HEAD_TOKEN_IDS]]
        bias = np.asarray(meta[HEAD_BIAS], np.float64)
        thresholds = meta.get(HEAD_THRESHOLDS)
        shift = meta.get(HEAD_BIAS_SHIFT)
        scale = meta.get(HEAD_SCALE)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: incomplete localguard head metadata ({exc})") from None
    k = len(names)
    arrays = [bias] + [np.asarray(a) for a in (thresholds, shift, scale) if a is not None]
    if len(ids) != k or any(a.shape != (k,) for a in arrays):
        raise InputError(f"{where}: localguard head metadata lengths differ from {k} outputs")
    if HEAD_CLS_TOKEN in meta and len(meta.get(HEAD_CLS_RULE) or ()) != 3:
        raise InputError(f"{where}: a CLS head needs {HEAD_CLS_RULE} = [r1, r2, r3]")
    if scale is not None and not np.all(np.asarray(scale, np.float64) > 0):
        raise InputError(f"{where}: localguard head scale must be positive")
    extra = {key: value for key, value in meta.items() if key not in HEAD_ROW_KEYS}
    return HeadSpec(
        names,
        ids,
        bias,
        None if thresholds is None else np.asarray(thresholds, np.float64),
        None if shift is None else np.asarray(shift, np.float64),
        None if scale is None else np.asarray(scale, np.float64),
        extra,
    )


def read_head(path: Path) -> HeadSpec | None:
    """The head described by a GGUF file (model or LoRA adapter), or None."""
    return head_from_metadata(read_metadata(path), str(path))


def patch_metadata(path: Path, values: dict[str, list[float]]) -> None:
    """Overwrite float arrays of existing metadata keys in place, same lengths only (so no
    byte of the file moves). Used on a finished file before it gets its final name."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    for key, new in values.items():
        found = reader.fields.get(key)
        if found is None:
            raise InputError(f"{path}: no metadata key {key} to update")
        if len(found.data) != len(new):
            raise InputError(f"{path}: {key} has {len(found.data)} values, not {len(new)}")
        for index, value in zip(found.data, new, strict=True):
            found.parts[index][0] = value
    reader.data.flush()
    del reader


# --- the model --------------------------------------------------------------------------------


def _logits_address(lib):
    """llama_get_logits_ith(ctx, i) as an int address: llama-cpp-python's binding returns a
    float pointer object, whose conversion costs more than the call. Falls back to it."""
    cdll = getattr(getattr(lib, "llama_cpp", None), "_lib", None)
    if cdll is not None:
        with contextlib.suppress(AttributeError):
            proto = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)
            return proto(("llama_get_logits_ith", cdll))
    get = lib.llama_get_logits_ith

    def address(ctx, i: int) -> int | None:
        return ctypes.cast(get(ctx, i), ctypes.c_void_p).value

    return address


CLS_SEQUENCE = 1
"""The KV-cache sequence of a CLS step (the generated sequence is 0)."""

SMALL_MODEL_BYTES = 32 * 2**20


def default_threads(path: Path) -> int:
    """One thread for small files (llama.cpp's thread synchronisation then costs more than it
    saves, and much more on a busy machine), every core otherwise."""
    try:
        small = Path(path).stat().st_size < SMALL_MODEL_BYTES
    except OSError:
        small = False
    return 1 if small else max(1, os.cpu_count() or 1)


class GGUFModel:
    """One GGUF model (optionally with a LoRA adapter) and one sequence on it.

    feed() appends tokens at the current position and returns their logits; rewind() drops
    positions from the KV cache; eval() is reset() + feed(). Logits cover every token id,
    the head's rows included; masked() sets those to -inf before sampling. A file with a CLS
    head gets a second sequence for cls(), which shares the first one's KV cells.
    """

    def __init__(
        self,
        path: Path,
        *,
        lora: Path | None = None,
        lora_scale: float = 1.0,
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_threads: int | None = None,
        f32_cache: bool = False,
    ) -> None:
        import llama_cpp

        _init_backend()
        self.path = Path(path)
        self._lib = llama_cpp
        self._model = self._ctx = self._adapter = self._batch = self._cls_batch = None
        self._cls_token = None
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such GGUF file")
        reader = open_gguf(self.path)  # read once: the metadata, and the tensors if AMX asks
        meta = metadata(reader)
        head = head_from_metadata(meta, str(self.path))
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if llama_cpp.llama_supports_gpu_offload() else 0
        params.use_extra_bufts = extra_buffer_types_safe(self.path, reader)
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise InputError(f"llama.cpp cannot load {self.path} (damaged or unsupported GGUF)")
        try:
            cls_token = None if head is None else head.cls_token
            self._open_context(n_ctx, n_batch, n_threads, f32_cache, cls_token)
            if lora is not None:
                lora_meta = read_metadata(Path(lora))
                head = head_from_metadata(lora_meta, str(lora)) or head
                self._attach_lora(Path(lora), lora_scale)
        except BaseException:
            self.close()
            raise
        self.head = head
        self.metadata = meta
        self.position = 0

    def _open_context(
        self, n_ctx: int, n_batch: int, n_threads: int | None, f32: bool, cls_token: int | None
    ) -> None:
        lib = self._lib
        trained = int(lib.llama_model_n_ctx_train(self._model))
        # a CLS step is a second sequence whose cells are the first one's (a unified cache lets
        # a sequence copy share cells by position range), plus one cell of its own
        own = int(cls_token is not None)
        n_ctx = min(n_ctx + own, trained) if trained > 0 else n_ctx + own
        self.vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_ctx, self.n_batch = int(n_ctx) - own, int(min(n_batch, n_ctx - own))
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = 1 + (cls_token is not None)
        params.kv_unified = params.kv_unified or cls_token is not None
        threads = n_threads or default_threads(self.path)
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED if f32 else -1
        if f32:  # only the weights' own rounding is measured
            params.type_k = params.type_v = lib.GGML_TYPE_F32
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise InputError(f"llama.cpp cannot create a context for {self.path}")
        self._batch = batch = lib.llama_batch_init(self.n_batch, 0, 1)
        # the batch's arrays, fetched once (a ctypes field read makes a new pointer object)
        self._batch_token, self._batch_pos, self._batch_want = batch.token, batch.pos, batch.logits
        for i in range(self.n_batch):  # one sequence: the same for every slot, set once
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
        self._cls_token, self._cls_batch = cls_token, None
        if cls_token is not None:
            self._cls_batch = cls = lib.llama_batch_init(1, 0, 1)
            cls.n_tokens, cls.token[0], cls.n_seq_id[0] = 1, cls_token, 1
            cls.seq_id[0][0], cls.logits[0] = CLS_SEQUENCE, True
        self._logits_at = _logits_address(lib)
        self._views: dict[int, np.ndarray] = {}

    def _attach_lora(self, lora: Path, scale: float) -> None:
        lib = self._lib
        if not lora.is_file():
            raise InputError(f"{lora}: no such LoRA GGUF file")
        self._adapter = lib.llama_adapter_lora_init(self._model, str(lora).encode())
        if not self._adapter:
            raise InputError(f"llama.cpp cannot apply the LoRA {lora} to {self.path}")
        self._lora = (lora, scale)
        self._use_lora(self._ctx)

    def _use_lora(self, ctx) -> None:
        """Apply the attached LoRA adapter (if any) to a context of this model."""
        if not self._adapter:
            return
        lib, (lora, scale) = self._lib, self._lora
        adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._adapter)
        scales = (ctypes.c_float * 1)(scale)
        if lib.llama_set_adapters_lora(ctx, adapters, 1, scales) != 0:
            raise InputError(f"llama.cpp cannot apply the LoRA {lora} to {self.path}")

    # --- tokens ---

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        """Token ids of text; special=False keeps control-token strings as plain text."""
        data = text.encode("utf-8")
        room = len(data) + 8
        buf = (self._lib.llama_token * room)()
        n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, room, add_bos, special)
        if n < 0:
            room = -n
            buf = (self._lib.llama_token * room)()
            n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, room, add_bos, special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (control tokens are empty unless special)."""
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        """Whether token ends a generation (EOS, EOT, ...), as llama.cpp decides."""
        return bool(self._lib.llama_vocab_is_eog(self.vocab, int(token)))

    @property
    def bos(self) -> int:
        """The BOS token id, -1 when the vocabulary has none."""
        return int(self._lib.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        """The EOS token id, -1 when the vocabulary has none."""
        return int(self._lib.llama_vocab_eos(self.vocab))

    @property
    def adds_bos(self) -> bool:
        """Whether a sequence starts with BOS (the file's tokenizer.ggml.add_bos_token)."""
        return bool(self._lib.llama_vocab_get_add_bos(self.vocab))

    # --- evaluation ---

    def reset(self) -> None:
        """Forget the sequence (clear the KV cache)."""
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        self.position = 0

    def rewind(self, keep: int) -> None:
        """Keep the first `keep` positions of the sequence, drop the rest from the KV cache."""
        if not 0 <= keep <= self.position:
            raise ValueError(f"cannot rewind to {keep}: the sequence has {self.position} tokens")
        mem = self._lib.llama_get_memory(self._ctx)
        if not self._lib.llama_memory_seq_rm(mem, 0, keep, -1):
            raise RuntimeError(f"llama.cpp could not drop KV positions from {keep}")
        self.position = keep

    def feed(self, tokens: list[int], all_logits: bool = True) -> np.ndarray:
        """Append tokens; returns (len(tokens), n_vocab) logits (only the last row when
        all_logits is False)."""
        tokens = self._checked(tokens)
        if not tokens:
            return np.zeros((0, self.n_vocab), np.float32)
        rows = []
        for size, final in self._decode_chunks(tokens, all_logits):
            if all_logits:
                rows += [self._row(i).copy() for i in range(size)]
            elif final:
                rows.append(self._row(size - 1).copy())
        return np.stack(rows)

    def feed_columns(
        self, tokens: list[int], columns: np.ndarray, all_logits: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Append tokens; returns the logits after the last one (a float32 copy of one row)
        and the logits at `columns` of every fed position, (len(tokens), len(columns)), or of
        the last one only when all_logits is False. Only these values are copied out of
        llama.cpp: a guarded step needs one whole row and the head's few columns."""
        tokens = self._checked(tokens)
        if not tokens:
            raise ValueError("feed_columns needs at least one token")
        picked = []
        for size, final in self._decode_chunks(tokens, all_logits):
            if all_logits:
                picked += [self._row(i)[columns] for i in range(size - 1)]
            if all_logits or final:
                last = self._row(size - 1)
                picked.append(last[columns])
        cols = picked[0][None] if len(picked) == 1 else np.stack(picked)
        return last.copy(), cols

    def _checked(self, tokens: list[int]) -> list[int]:
        """tokens as ints, checked against the vocabulary and the room left in the context."""
        tokens = [int(t) for t in tokens]
        if self.position + len(tokens) > self.n_ctx:
            raise InputError(
                f"{self.position + len(tokens)} tokens do not fit the context of {self.n_ctx}"
            )
        for t in tokens:
            if not 0 <= t < self.n_vocab:
                raise InputError(f"token id {t} is outside the vocabulary of {self.n_vocab}")
        return tokens

    def _decode_chunks(self, tokens: list[int], all_logits: bool) -> Iterator[tuple[int, bool]]:
        """Decode tokens in batches of n_batch; after each, (its size, whether it is the last),
        while its logits are readable."""
        for first in range(0, len(tokens), self.n_batch):
            chunk = tokens[first : first + self.n_batch]
            final = first + len(chunk) == len(tokens)
            self._decode(chunk, all_logits, final)
            yield len(chunk), final

    def _decode(self, chunk: list[int], all_logits: bool, last: bool = True) -> None:
        """One llama_decode of chunk at the current position; logits of every position of it
        when all_logits, else of its last one when last, else none."""
        token, pos, want = self._batch_token, self._batch_pos, self._batch_want
        n, at = len(chunk), self.position
        self._batch.n_tokens = n
        for i in range(n):
            token[i] = chunk[i]
            pos[i] = at + i
            want[i] = all_logits
        want[n - 1] = all_logits or last
        code = self._lib.llama_decode(self._ctx, self._batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code}")
        self.position += n

    def decode_many(
        self,
        prompts: Sequence[Sequence[int]],
        room: int,
        next_token: Callable[[int, np.ndarray], int | None],
        n_threads: int | None = None,
    ) -> None:
        """Decode several sequences side by side, one llama_decode per step for all of them
        (a matrix product instead of a matrix-vector product per weight): on 2 CPU cores 8
        sequences of SmolLM2-135M decoded 2.3 to 2.5 times the tokens per second of one in
        F16 and Q4_K_M, 1.45 times in Q4_1, whose blocks have no batched kernel. next_token(i,
        logits) is given sequence i's next-token logits (a view, valid during the call) after
        its prompt and after each token it returned, and returns the token to append, or None
        when the sequence has ended; room is the most tokens any sequence appends. Its own
        context, freed after: the single sequence's KV cache is untouched. The rounding depends
        on the batch (its size, members and order), so where two tokens are nearly tied a
        sequence decoded in another batch may take the other one; the same batch decodes the
        same way every time."""
        lib = self._lib
        tokens = [[int(t) for t in p] for p in prompts]
        if any(not 0 <= t < self.n_vocab for p in tokens for t in p):
            raise InputError(f"a prompt holds a token id outside the vocabulary of {self.n_vocab}")
        params = lib.llama_context_default_params()
        params.n_ctx = sum(len(p) for p in tokens) + len(tokens) * (room + 1)
        params.n_batch = params.n_ubatch = min(self.n_batch, params.n_ctx)
        params.n_seq_max = len(tokens)
        params.kv_unified = True  # every sequence draws cells from one pool of n_ctx
        params.n_threads = params.n_threads_batch = n_threads or default_threads(self.path)
        params.no_perf = True
        ctx = lib.llama_init_from_model(self._model, params)
        if not ctx:
            raise InputError(f"llama.cpp cannot create a context for {self.path}")
        batch = lib.llama_batch_init(params.n_batch, 0, 1)
        try:
            self._use_lora(ctx)
            todo = [(i, j, t) for i, p in enumerate(tokens) for j, t in enumerate(p)]
            lengths = [len(p) for p in tokens]
            while todo:  # prompt tokens first, then one token per live sequence per step
                chunk, todo = todo[: params.n_batch], todo[params.n_batch :]
                for k, (i, j, t) in enumerate(chunk):
                    batch.token[k], batch.pos[k] = t, j
                    batch.n_seq_id[k], batch.seq_id[k][0] = 1, i
                    batch.logits[k] = j == lengths[i] - 1
                batch.n_tokens = len(chunk)
                code = lib.llama_decode(ctx, batch)
                if code != 0:
                    raise RuntimeError(f"llama_decode failed with code {code}")
                for k, (i, j, _) in enumerate(chunk):
                    if j != lengths[i] - 1:
                        continue
                    buf = (ctypes.c_float * self.n_vocab).from_address(self._logits_at(ctx, k))
                    token = next_token(i, np.ctypeslib.as_array(buf))
                    if token is not None:
                        todo.append((i, lengths[i], int(token)))
                        lengths[i] += 1
        finally:
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)

    def cls(self, reads: list[tuple[int, int]], columns: np.ndarray) -> np.ndarray:
        """The logits at `columns` (a copy) of the CLS token decoded as a second sequence that
        holds the KV cells of the [first, end) position ranges `reads` only, one position past
        the newest of them (cls_token.row_positions); that sequence is removed after."""
        lib = self._lib
        if self._cls_batch is None:
            raise InputError(f"{self.path} has no CLS head")
        mem = lib.llama_get_memory(self._ctx)
        newest = -1
        for first, end in reads:
            if not 0 <= first < end <= self.position:
                continue
            lib.llama_memory_seq_cp(mem, 0, CLS_SEQUENCE, first, end)
            newest = max(newest, end - 1)
        self._cls_batch.pos[0] = newest + 1
        try:
            code = lib.llama_decode(self._ctx, self._cls_batch)
            if code != 0:
                raise RuntimeError(f"llama_decode of the CLS step failed with code {code}")
            return self._row(0)[columns]
        finally:
            lib.llama_memory_seq_rm(mem, CLS_SEQUENCE, -1, -1)

    def _row(self, i: int) -> np.ndarray:
        """The logits of batch position i of the last decode, as a view into llama.cpp's
        buffer (no copy). Views are kept per address: a row lives at the same address."""
        addr = self._logits_at(self._ctx, i)
        if not addr:
            raise RuntimeError(f"llama.cpp has no logits for batch position {i}")
        view = self._views.get(addr)
        if view is None:
            if len(self._views) >= 4 * self.n_batch:  # the buffer moved: forget the old rows
                self._views.clear()
            buf = (ctypes.c_float * self.n_vocab).from_address(addr)
            view = self._views[addr] = np.ctypeslib.as_array(buf)
        return view

    def eval(self, tokens: list[int], first: int = 0) -> np.ndarray:
        """Logits at positions first.. of a fresh sequence of tokens: (len - first, n_vocab)."""
        self.reset()
        if first > 0:
            self.feed(tokens[:first], all_logits=False)
        return self.feed(tokens[first:])

    def masked(self, logits: np.ndarray) -> np.ndarray:
        """A copy of logits with the head's rows (and CLS token) at -inf, never sampled."""
        out = np.array(logits, dtype=np.float32, copy=True)
        out[..., list(self.unsampled)] = -np.inf
        return out

    @property
    def unsampled(self) -> tuple[int, ...]:
        """Token ids that are no text: the head's rows and a CLS head's token."""
        if self.head is None:
            return ()
        return (*self.head.token_ids, *([] if self._cls_token is None else [self._cls_token]))

    # --- lifetime ---

    def close(self) -> None:
        lib = self._lib
        self._views = {}  # views into the context's buffer die with it
        for name in ("_batch", "_cls_batch"):
            if getattr(self, name, None) is not None:
                lib.llama_batch_free(getattr(self, name))
                setattr(self, name, None)
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._adapter:
            lib.llama_adapter_lora_free(self._adapter)
            self._adapter = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> GGUFModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
