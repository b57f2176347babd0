"""open_guard_backend: either backend from one call, with errors that name the wrong option."""

from __future__ import annotations

from pathlib import Path

import pytest

from localguard.backends.factory import open_guard_backend
from localguard.errors import InputError


def test_unknown_backend_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="llamacpp, mlx, not 'onnx'"):
        open_guard_backend(tmp_path, "onnx")


@pytest.mark.parametrize(
    ("backend", "option", "message"),
    [
        ("llamacpp", "adapter", "--adapter and --head are for --backend mlx"),
        ("llamacpp", "head", "--adapter and --head are for --backend mlx"),
        ("mlx", "lora", "--lora is for --backend llamacpp"),
    ],
)
def test_options_of_the_other_backend_are_refused(
    tmp_path: Path, backend: str, option: str, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        open_guard_backend(tmp_path, backend, **{option: tmp_path})


def test_missing_gguf_is_an_input_error(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    with pytest.raises(InputError, match="no such GGUF file"):
        open_guard_backend(tmp_path / "missing.gguf")


def test_mlx_model_without_head_serves_guard_off(starter_model: Path) -> None:
    pytest.importorskip("mlx_lm")
    backend = open_guard_backend(starter_model, "mlx")
    try:
        assert backend.head.names == () and backend.safety_ids == ()
        step = backend.feed(backend.encode_chat([{"role": "user", "content": "hi"}]))
        assert step.logits.shape == (backend.vocab_size,)
    finally:
        backend.close()
    assert backend.length == 0
