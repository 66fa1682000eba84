"""LoRA on charlm: a frozen base from a checkpoint, and only the adapters travel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from potluck.cli.main import app
from potluck.core.errors import DataError, SchemaMismatch
from potluck.core.params import Params
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.lm_task import CharLMTask, LMSettings
from potluck.tasks.protocol import DataInfo
from potluck.tasks.text import Vocabulary, text_dataset

pytest.importorskip("peft", reason="LoRA needs the peft library (pip install peft)")

SHAPE = {"context": 8, "width": 16, "depth": 2, "heads": 2, "batch_size": 8, "device": "cpu", "vocab": "byte"}
TEXT = "the cat sat on the mat. " * 30


def make(**settings) -> tuple[CharLMTask, Dataset, Params]:
    task = CharLMTask(settings=LMSettings().merged({**SHAPE, **settings}))
    data = text_dataset(TEXT, Vocabulary("byte"), 8)
    return task, data, task.build(DataInfo.from_dataset(data), seed=0)


@pytest.fixture
def base(tmp_path):
    task, data, params = make(steps=30, lr=0.01)
    trained = task.fit(params, data, {}, seed=0).params
    path = tmp_path / "base.safetensors"
    path.write_bytes(bytes(trained.encode()))
    return path, trained, task.evaluate(trained, data).loss


def test_only_adapters_are_parameters_and_they_start_at_the_base(base):
    path, full, base_loss = base
    task, data, adapters = make(init_from=str(path), lora_rank=2)
    assert adapters and all("lora_" in name for name in adapters)
    # 4 adapted layers per block, an A and a B each, 2 blocks
    assert len(adapters) == 4 * 2 * 2
    assert adapters.num_values < full.num_values / 4
    assert task.evaluate(adapters, data).loss == pytest.approx(base_loss, rel=1e-6)  # B starts at zero


def test_fit_trains_adapters_and_leaves_the_base_frozen(base):
    path, full, base_loss = base
    task, data, adapters = make(init_from=str(path), lora_rank=4, steps=40, lr=0.01)
    out = task.fit(adapters, data, {}, seed=1)
    assert out.params.schema == adapters.schema
    assert task.evaluate(out.params, data).loss < base_loss
    frozen = {n: p.detach().numpy() for n, p in task._model.named_parameters() if not p.requires_grad}
    for name, value in full.items():  # peft renames adapted layers' weights to base_layer.weight
        match = [v for n, v in frozen.items() if n.replace("base_layer.", "") == name]
        assert len(match) == 1 and np.array_equal(match[0], value), name


def test_a_base_that_is_not_this_model_is_refused(tmp_path, base):
    path, *_ = base
    with pytest.raises(SchemaMismatch):
        make(init_from=str(path), lora_rank=2, width=32)
    with pytest.raises(DataError, match="cannot read the base checkpoint"):
        make(init_from=str(tmp_path / "missing.safetensors"), lora_rank=2)


def test_a_lora_run_sends_adapters_and_generates(tmp_path, base):
    path, *_ = base
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    flags = [f"-F{k}={json.dumps(v)}" for k, v in {**SHAPE, "steps": 5}.items()]
    run = tmp_path / "lora"
    done = CliRunner().invoke(app, ["simulate", "--task", "charlm", "--data-path", str(text), "--nodes", "2",
                                    "--rounds", "1", "--partition", "iid", *flags, f"-Finit_from={json.dumps(str(path))}",
                                    "-Flora_rank=2", "--run-dir", str(run)])
    assert done.exit_code == 0, done.output
    final = Params.decode((run / "model.safetensors").read_bytes())
    assert all("lora_" in name for name in final)
    out = CliRunner().invoke(app, ["generate", str(run), "--prompt", "the ", "--tokens", "10", "--seed", "1"])
    assert out.exit_code == 0 and out.output.startswith("the "), out.output
