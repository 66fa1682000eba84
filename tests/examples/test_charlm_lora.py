"""examples/charlm_lora.py at a test's size: pretrain, then LoRA, where only adapters travel."""

from __future__ import annotations

import math

import pytest

from conftest import REPO
from potluck import Params

pytest.importorskip("torch", reason="the language model needs PyTorch")
pytest.importorskip("peft", reason="LoRA needs the peft library (pip install peft)")

TEXT = "the cat sat on the mat. " * 30


def test_lora_finetune_sends_only_adapters(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the same run on any machine
    import examples.charlm_lora as example

    text = tmp_path / "cat.txt"
    text.write_text(TEXT)
    base, lora = example.main(str(text), tmp_path, small=True)
    assert math.isfinite(base.loss) and math.isfinite(lora.loss)
    assert 0 < lora.bytes_up < base.bytes_up / 4
    adapters = Params.decode((lora.run_dir / "model.safetensors").read_bytes())
    assert len(adapters) and all("lora_" in name for name in adapters)
    assert 'init_from = "' + str(base.run_dir / "model.safetensors") in (lora.run_dir / "config.toml").read_text()
