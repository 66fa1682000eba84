"""charlm: the transformer is causal, the loss is the token cross-entropy, training learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from potluck.core.errors import ConfigError, DataError, TaskError
from potluck.core.params import Params
from potluck.tasks.builtin import resolve_task
from potluck.tasks.charlm import CharTransformer, LMShape
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.lm_task import CharLMTask, LMSettings
from potluck.tasks.protocol import DataInfo, TextGenerator, metric_of
from potluck.tasks.text import Vocabulary, text_dataset

TINY = {"context": 8, "width": 16, "depth": 1, "heads": 2, "steps": 5, "batch_size": 4, "device": "cpu"}


def tiny_task(text: str = "abcd" * 40, **settings) -> tuple[CharLMTask, Dataset, Params]:
    task = CharLMTask(settings=LMSettings().merged({**TINY, **settings}))
    path_free = text_dataset(text, Vocabulary.for_text(task.settings.vocab, text), task.settings.context)
    task.vocab = Vocabulary.for_text(task.settings.vocab, text)
    return task, path_free, task.build(DataInfo.from_dataset(path_free), seed=0)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_the_model_is_causal(positions):
    torch.manual_seed(0)
    model = CharTransformer(LMShape(11, context=10, width=16, depth=2, heads=4, positions=positions)).eval()
    ids = torch.randint(0, 11, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 11
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 10, 11)
    assert torch.equal(a[:, :6], b[:, :6])  # what comes later never reaches the past
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_rope_tables_do_not_travel_and_learned_positions_do():
    rope = CharTransformer(LMShape(5, context=8, width=8, heads=2, positions="rope"))
    learned = CharTransformer(LMShape(5, context=8, width=8, heads=2, positions="learned"))
    assert not any("rope" in k or k.startswith("positions") for k in rope.state_dict())
    assert learned.state_dict()["positions.weight"].shape == (8, 8)
    with pytest.raises(ValueError, match="longer than the context"):
        rope(torch.zeros(1, 9, dtype=torch.long))


def test_shape_errors_are_config_errors():
    with pytest.raises(ConfigError, match="multiple of heads"):
        LMShape(5, width=10, heads=3)
    with pytest.raises(ConfigError, match="rope needs an even head width"):
        LMShape(5, width=6, heads=2, positions="rope")
    with pytest.raises(ConfigError, match="positions must be one of learned, rope"):
        LMShape(5, positions="alibi")


def test_loss_is_the_mean_token_cross_entropy():
    task, data, params = tiny_task(vocab="char")
    out = task.evaluate(params, data)
    # Oracle: numpy log-softmax of the model's logits, gathered at each next token.
    model = CharTransformer(LMShape(task.vocab.size, 8, 16, 1, 2))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x[:, :-1]).long()).double().numpy()
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, data.x[:, 1:, None].astype(np.int64), axis=-1)
    assert out.loss == pytest.approx(float(nll.mean()), rel=1e-5)
    assert out.metrics["perplexity"] == pytest.approx(math.exp(out.loss))
    assert out.num_examples == len(data)


@pytest.mark.parametrize(("vocab", "size"), [("byte", 256), ("char", 4)])
def test_a_uniform_model_has_perplexity_equal_to_the_vocabulary_size(vocab, size):
    task, data, params = tiny_task(vocab=vocab)
    uniform = Params.from_arrays({k: (np.zeros_like(v) if k == "head.weight" else v) for k, v in params.items()})
    out = task.evaluate(uniform, data)
    assert out.loss == pytest.approx(math.log(size), rel=1e-6)
    assert out.metrics["perplexity"] == pytest.approx(size, rel=1e-5)


def test_fit_learns_and_is_deterministic():
    task, data, params = tiny_task(vocab="char", steps=60, lr=0.01)
    before = task.evaluate(params, data).loss
    first = task.fit(params, data, {}, seed=3)
    second = task.fit(params, data, {}, seed=3)
    assert first.params.digest == second.params.digest
    after = task.evaluate(first.params, data).loss
    assert after < 0.5 * before
    assert first.num_examples == len(data) and math.isfinite(first.metrics["train_loss"])


def test_generate_continues_a_learned_pattern_and_is_seeded():
    task, data, params = tiny_task(vocab="char", steps=150, lr=0.01)
    trained = task.fit(params, data, {}, seed=0).params
    assert isinstance(task, TextGenerator)
    assert task.generate(trained, "abcd", tokens=8, temperature=0) == "abcdabcdabcd"
    a = task.generate(trained, "ab", tokens=20, temperature=1.5, seed=7)
    assert a == task.generate(trained, "ab", tokens=20, temperature=1.5, seed=7)
    assert len(a) == 22 and a.startswith("ab")


def test_settings_are_checked_against_the_built_model():
    task = resolve_task("charlm", options={"width": 32, "heads": 4})
    assert isinstance(task, CharLMTask) and task.settings.width == 32
    assert metric_of(task).name == "perplexity" and not metric_of(task).higher_is_better
    task.check_fit_config({"width": 32, "lr": 0.01, "proximal_mu": 0.1})
    with pytest.raises(ConfigError, match="width=64 shapes the model, which was made with width=32"):
        task.check_fit_config({"width": 64})
    with pytest.raises(ConfigError, match="unknown fit setting 'momentum'"):
        task.check_fit_config({"momentum": 0.9})
    with pytest.raises(ConfigError, match="steps must be an integer ≥ 1"):
        task.check_fit_config({"steps": 0})
    with pytest.raises(ConfigError, match="device must be one of"):
        task.check_fit_config({"device": "tpu"})


def test_build_checks_the_data_shape_and_the_vocabulary():
    task = CharLMTask(settings=LMSettings(vocab="char", context=8))
    with pytest.raises(TaskError, match="call load_data"):
        task.build(DataInfo((9,), 1), 0)
    with pytest.raises(ConfigError, match="context=64"):
        CharLMTask().build(DataInfo((9,), 1), 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_a_config_error():
    task, data, params = tiny_task()
    with pytest.raises(ConfigError, match="no CUDA device"):
        task.fit(params, data, {"device": "cuda"}, seed=0)
    with pytest.raises(ConfigError, match="amp=bf16 needs a CUDA device"):
        task.fit(params, data, {"device": "cpu", "amp": "bf16"}, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_fit_on_cuda_with_bf16_matches_cpu_closely():
    task, data, params = tiny_task(vocab="char", steps=20, lr=0.01)
    cpu = task.fit(params, data, {"device": "cpu"}, seed=1)
    gpu = task.fit(params, data, {"device": "cuda", "amp": "bf16"}, seed=1)
    assert all(v.dtype == np.float32 for v in gpu.params.values())
    assert gpu.metrics["train_loss"] == pytest.approx(cpu.metrics["train_loss"], rel=0.05)
    ev = task.evaluate(gpu.params, data)  # evaluates on the device of the last fit
    assert ev.loss == pytest.approx(task.evaluate(cpu.params, data).loss, rel=0.1)


def test_blocks_already_cut_load_from_npz_as_potluck_up_writes_them(tmp_path):
    task, data, _ = tiny_task()
    np.savez(tmp_path / "node.npz", x=data.x, y=data.y)
    loaded = task.load_data(tmp_path / "node.npz")
    assert np.array_equal(loaded.x, data.x) and loaded.x.dtype == np.int32
    with pytest.raises(DataError, match=r"integer blocks of 17 tokens \(context=16\)"):
        CharLMTask(settings=LMSettings(context=16)).load_data(tmp_path / "node.npz")
    with pytest.raises(ConfigError, match="need vocab=byte"):
        CharLMTask(settings=LMSettings(vocab="char", context=8)).load_data(tmp_path / "node.npz")
