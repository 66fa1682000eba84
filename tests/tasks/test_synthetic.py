"""Synthetic(α, β) (Li et al. 2020) against its definition, and the synthetic task."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.errors import ConfigError, DataError
from potluck.core.seeds import rng_for
from potluck.tasks.builtin import resolve_task
from potluck.tasks.synthetic import Synthetic, VirtualNodeSource, straggler_epochs


def test_a_node_is_its_seed_and_index():
    gen = Synthetic()
    a, b = gen.node_data(7, 123), gen.node_data(7, 123)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(gen.node_model(7, 124).w, gen.node_model(7, 123).w)
    assert not np.array_equal(gen.node_model(8, 123).w, gen.node_model(7, 123).w)
    assert a.x.shape == (gen.node_model(7, 123).size, 60) and a.x.dtype == np.float32


def test_inputs_follow_n_v_sigma_and_labels_are_the_argmax_exactly():
    gen = Synthetic()
    model = gen.node_model(3, 5)
    n = 20_000
    data = gen.examples(model, n, rng_for(0, "test"), "many")
    sigma = np.arange(1, 61) ** -1.2  # Σ_jj = j^(−1.2)
    x = data.x.astype(np.float64)
    assert np.all(np.abs(x.mean(axis=0) - model.v) < 5 * np.sqrt(sigma / n))
    assert np.allclose(x.var(axis=0), sigma, rtol=0.06)
    logits = x @ model.w.T + model.b
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert np.array_equal(data.y, np.argmax(softmax / softmax.sum(axis=1, keepdims=True), axis=1))
    assert model.w.shape == (10, 60) and model.b.shape == (10,)


def test_alpha_spreads_the_models_and_beta_the_inputs():
    def spread(gen: Synthetic) -> tuple[float, float]:
        models = [gen.node_model(0, k) for k in range(300)]
        return float(np.std([m.w.mean() for m in models])), float(np.std([m.v.mean() for m in models]))

    w_same, v_same = spread(Synthetic(alpha=0.0, beta=0.0))
    w_wide, v_wide = spread(Synthetic(alpha=5.0, beta=5.0))
    # mean of W_k's 600 entries ~ N(u_k, 1/600), u_k ~ N(0, α); mean of v_k's 60 ~ N(B_k, 1/60), B_k ~ N(0, β)
    assert w_same == pytest.approx(1 / np.sqrt(600), rel=0.2) and v_same == pytest.approx(1 / np.sqrt(60), rel=0.2)
    assert w_wide == pytest.approx(5.0, rel=0.2) and v_wide == pytest.approx(5.0, rel=0.2)
    b = np.array([Synthetic(alpha=5.0).node_model(0, k).b.mean() - Synthetic(alpha=5.0).node_model(0, k).w.mean()
                  for k in range(100)])
    assert np.std(b) < 1.0  # b_k shares W_k's mean u_k


def test_sizes_are_lognormal_plus_the_minimum_within_the_cap():
    gen = Synthetic(max_examples=10**9)
    sizes = np.array([gen.node_model(1, k).size for k in range(3000)])
    assert sizes.min() >= 50
    assert np.median(sizes - 50) == pytest.approx(np.exp(4.0), rel=0.15)  # lognormal(4, 2)'s median
    capped = [Synthetic(max_examples=80).node_model(1, k).size for k in range(200)]
    assert max(capped) == 80 and min(capped) >= 50


def test_held_out_comes_from_the_first_nodes_distributions():
    gen = Synthetic(test_nodes=4, test_per_node=30)
    test = gen.held_out_data(2, nodes=1_000_000)
    assert len(test) == 120
    for k in range(4):
        m = gen.node_model(2, k)
        part = test.x[30 * k: 30 * (k + 1)].astype(np.float64)
        assert np.array_equal(test.y[30 * k: 30 * (k + 1)], np.argmax(part @ m.w.T + m.b, axis=1))
    assert len(gen.held_out_data(2, nodes=2)) == 60  # never from nodes the federation lacks
    assert np.array_equal(gen.held_out_data(2, nodes=10**6).x, test.x)


def test_bad_generator_settings_are_named():
    with pytest.raises(ConfigError, match="classes must be an integer ≥ 2"):
        Synthetic(classes=1)
    with pytest.raises(ConfigError, match="max_examples must be an integer ≥ min_examples"):
        Synthetic(max_examples=10)
    with pytest.raises(ConfigError, match="alpha must be a finite number ≥ 0"):
        Synthetic(alpha=-1.0)


def test_stragglers_run_fewer_epochs_at_the_given_rate():
    assert {straggler_epochs(20, 0.0, s) for s in range(100)} == {20}
    full = [straggler_epochs(20, 1.0, s) for s in range(400)]
    assert 1 <= min(full) and max(full) <= 19 and len(set(full)) == 19
    some = [straggler_epochs(20, 0.5, s) for s in range(1000)]
    assert sum(e < 20 for e in some) == pytest.approx(500, abs=60)
    assert straggler_epochs(1, 1.0, 3) == 1


def test_the_task_generates_nodes_and_checks_its_options():
    task = resolve_task("synthetic", options={"synthetic_alpha": 0.5, "features": 8, "classes": 3})
    assert isinstance(task, VirtualNodeSource)
    assert task.data_info().input_shape == (8,) and task.data_info().num_classes == 3
    assert np.array_equal(task.node_data(1, 9).x, Synthetic(alpha=0.5, features=8, classes=3).node_data(1, 9).x)
    task.check_fit_config({"synthetic_alpha": 0.5, "lr": 0.1, "straggler_fraction": 0.0})
    with pytest.raises(ConfigError, match="synthetic_alpha=1.0 differs"):
        task.check_fit_config({"synthetic_alpha": 1.0})
    with pytest.raises(ConfigError, match="fit setting lr must be a number > 0"):
        task.check_fit_config({"lr": 0})
    with pytest.raises(ConfigError, match="unknown fit setting .nope."):
        task.check_fit_config({"nope": 1})
    with pytest.raises(ConfigError, match="straggler_fraction must be in"):
        resolve_task("synthetic", options={"straggler_fraction": 2.0})
    with pytest.raises(DataError, match="generates each virtual node's data"):
        task.load_data(None)


def test_the_task_learns_a_node_and_reports_straggling_epochs():
    task = resolve_task("synthetic", options={"straggler_fraction": 1.0})
    data = task.node_data(0, 4)
    params = task.build(task.data_info(), 0)
    before = task.evaluate(params, data).loss
    out = task.fit(params, data, {"epochs": 5, "lr": 0.05}, seed=11)
    assert 1 <= out.metrics["epochs"] <= 4 and out.metrics["epochs"] == straggler_epochs(5, 1.0, 11)
    assert task.evaluate(out.params, data).loss < before


def test_local_sgd_matches_torch_with_momentum_weight_decay_and_the_proximal_term():
    torch = pytest.importorskip("torch")
    task = resolve_task("synthetic", options={"features": 6, "classes": 4})
    data = task.node_data(0, 1)
    start = task.build(task.data_info(), 3)
    config = {"epochs": 3, "batch_size": len(data), "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01,
              "proximal_mu": 0.5}
    out = task.fit(start, data, config, seed=0)
    w = torch.tensor(start["weight"], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(start["bias"], dtype=torch.float64, requires_grad=True)
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt = torch.optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=0.01)
    x, y = torch.tensor(data.x, dtype=torch.float64), torch.tensor(data.y)
    losses = []
    for _ in range(3):  # one batch per epoch: the order of its rows does not matter
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + 0.25 * (((w - w0) ** 2).sum() + ((b - b0) ** 2).sum())
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.allclose(out.params["weight"], w.detach().numpy(), atol=1e-6)
    assert np.allclose(out.params["bias"], b.detach().numpy(), atol=1e-6)
    assert out.metrics["train_loss"] == pytest.approx(np.mean(losses))
    evaluated = task.evaluate(out.params, data)
    logits = torch.tensor(out.params["weight"], dtype=torch.float64)
    want = torch.nn.functional.cross_entropy(x @ logits.T + torch.tensor(out.params["bias"], dtype=torch.float64), y)
    assert evaluated.loss == pytest.approx(float(want), rel=1e-6)


def test_dropped_stragglers_fail_their_fit_and_others_train():
    from potluck.core.errors import TaskError

    task = resolve_task("synthetic", options={"straggler_fraction": 0.5, "drop_stragglers": True})
    data = task.node_data(0, 2)
    params = task.build(task.data_info(), 0)
    seeds = range(40)
    dropped = [s for s in seeds if straggler_epochs(3, 0.5, s) < 3]
    assert 0 < len(dropped) < 40
    with pytest.raises(TaskError, match="straggler .* is dropped"):
        task.fit(params, data, {"epochs": 3}, seed=dropped[0])
    kept = next(s for s in seeds if s not in dropped)
    assert task.fit(params, data, {"epochs": 3}, seed=kept).metrics["epochs"] == 3
    with pytest.raises(ConfigError, match="drop_stragglers must be true or false"):
        resolve_task("synthetic", options={"drop_stragglers": 1})


def test_a_simulation_of_synthetic_nodes_is_determined_by_its_seed(tmp_path):
    from potluck.apps.simulate import run_simulation
    from potluck.core.config import SimulationConfig

    def digest(seed: int, name: str) -> str:
        cfg = SimulationConfig(task="synthetic", nodes=100_000, fraction=0.0001, rounds=2, seed=seed,
                               run_dir=str(tmp_path / name), fit={"max_examples": 60})
        result = run_simulation(cfg)
        assert [r.sampled for r in result.records] == [10, 10]
        return result.final_params.digest

    assert digest(1, "a") == digest(1, "b") != digest(2, "c")
