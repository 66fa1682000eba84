"""Device and mixed-precision settings: resolved once, checked, and a no-op on the CPU."""

from __future__ import annotations

import pytest
import torch

from potluck.core.errors import ConfigError
from potluck.tasks.builtin import load_digits, resolve_task
from potluck.tasks.devices import amp_dtype, check_device_name, resolve_device
from potluck.tasks.protocol import DataInfo


def test_device_names_are_checked():
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        assert check_device_name(name) == name
    for bad in ("gpu", "cuda:", "cuda:x", 3):
        with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda or cuda:N"):
            check_device_name(bad)
    with pytest.raises(ConfigError, match="amp must be one of auto, off, bf16"):
        amp_dtype(torch.device("cpu"), "fp8")


def test_auto_picks_cuda_only_when_present_and_amp_auto_is_off_on_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert amp_dtype(torch.device("cpu"), "auto") is None
    assert amp_dtype(torch.device("cpu"), "off") is None


def test_on_the_cpu_device_settings_do_not_change_the_result():
    data = load_digits()
    data = data.subset(torch.arange(300).numpy())
    digests = []
    for config in ({}, {"device": "cpu"}, {"device": "cpu", "amp": "off"}, {"device": "auto", "amp": "auto"}):
        if not torch.cuda.is_available() or config.get("device") == "cpu":
            task = resolve_task("digits")
            params = task.build(DataInfo.from_dataset(data), seed=0)
            digests.append(task.fit(params, data, {**config, "epochs": 1}, seed=0).params.digest)
    assert len(set(digests)) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_the_classifier_trains_on_cuda_and_sends_float32():
    data = load_digits()
    task = resolve_task("digits")
    params = task.build(DataInfo.from_dataset(data), seed=0)
    out = task.fit(params, data, {"device": "cuda", "epochs": 1}, seed=0)
    assert all(v.dtype.name == "float32" for v in out.params.values())
    assert task.evaluate(out.params, data).metrics["accuracy"] > 0.8
