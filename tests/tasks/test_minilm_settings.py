"""minilm-speaker's settings: checked when the task is made, model settings fixed after.

Nothing here loads the model (no transformers, no weights), so these run everywhere.
"""

from __future__ import annotations

import pytest

from potluck.core.errors import ConfigError
from potluck.tasks.builtin import resolve_task
from potluck.tasks.minilm_task import MiniLMSettings, MiniLMSpeakerTask
from potluck.tasks.protocol import metric_of


def test_the_builtin_name_makes_a_classifier_shaped_by_the_fit_settings():
    task = resolve_task("minilm-speaker", options={"speakers": 6, "lora_rank": 4, "lr": 0.01})
    assert isinstance(task, MiniLMSpeakerTask)
    assert (task.settings.speakers, task.settings.lora_rank, task.settings.lr) == (6, 4, 0.01)
    assert metric_of(task).name == "accuracy" and metric_of(task).higher_is_better
    assert MiniLMSettings(names="ROMEO, JULIET,NURSE").classes == 3 and MiniLMSettings(speakers=5).classes == 5


@pytest.mark.parametrize(("key", "value", "message"), [
    ("speakers", 1, "speakers must be an integer ≥ 2"),
    ("max_tokens", 600, "max_tokens must be at most 512"),
    ("max_tokens", 2, "max_tokens must be an integer ≥ 3"),
    ("lora_rank", -1, "lora_rank must be an integer ≥ 0"),
    ("lora_alpha", 0, "lora_alpha must be a finite number > 0"),
    ("lr", 0, "lr must be a finite number > 0"),
    ("batch_size", True, "batch_size must be an integer ≥ 1"),
    ("names", 3, "names must be speaker names"),
    ("device", "tpu", "device"),
])
def test_bad_settings_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        MiniLMSettings().merged({key: value})


def test_a_run_may_change_training_settings_but_not_the_model():
    task = MiniLMSpeakerTask(settings=MiniLMSettings(lora_rank=8))
    task.check_fit_config({"lora_rank": 8, "lr": 0.01, "epochs": 2, "device": "cpu"})
    with pytest.raises(ConfigError, match="lora_rank=4 shapes the data or model, which was made with lora_rank=8"):
        task.check_fit_config({"lora_rank": 4})
    with pytest.raises(ConfigError, match="unknown fit setting 'steps'"):
        task.check_fit_config({"steps": 5})
