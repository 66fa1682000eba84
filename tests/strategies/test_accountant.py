"""The privacy accountant: ε as dp-accounting computes it, the budget guard, resume."""

from __future__ import annotations

import pytest
from dp_accounting import dp_event
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from potluck.core.errors import BudgetExhausted, ConfigError
from potluck.strategies.accountant import PrivacyAccountant


def library_epsilon(event, rounds: int, delta: float) -> float:
    accountant = RdpAccountant()  # the library's defaults, composed the plain way
    accountant.compose(event, rounds)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize(("q", "z", "delta"), [(1.0, 1.0, 1e-5), (0.25, 0.8, 1e-6)])
def test_central_epsilon_is_dp_accountings_poisson_sampled_gaussian(q, z, delta):
    guard = PrivacyAccountant(mode="central", noise_multiplier=z, sampling_probability=q, delta=delta)
    event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))
    for rounds in (1, 7):
        assert guard.epsilon(rounds) == library_epsilon(event, rounds, delta)
        assert guard.round_extras(rounds) == {"epsilon": guard.epsilon(rounds), "delta": delta}
    distributed = PrivacyAccountant(mode="distributed", noise_multiplier=z, sampling_probability=q, delta=delta)
    assert distributed.epsilon(7) == guard.epsilon(7)  # the sum carries σ·C, as in central DP


def test_local_epsilon_is_an_unsampled_gaussian_with_sensitivity_2c():
    guard = PrivacyAccountant(mode="local", noise_multiplier=3.0, sampling_probability=0.1, delta=1e-5)
    assert guard.epsilon(4) == library_epsilon(dp_event.GaussianDpEvent(1.5), 4, 1e-5)


def test_epsilon_grows_with_rounds_and_is_zero_before_any():
    guard = PrivacyAccountant(mode="central", noise_multiplier=1.0, sampling_probability=0.5, delta=1e-5)
    eps = [guard.epsilon(k) for k in range(0, 6)]
    assert eps[0] == 0.0 and all(a < b for a, b in zip(eps, eps[1:]))


def test_budget_stops_before_the_round_that_would_exceed_it():
    guard = PrivacyAccountant(mode="central", noise_multiplier=1.0, sampling_probability=1.0, delta=1e-5)
    budget = (guard.epsilon(3) + guard.epsilon(4)) / 2
    limited = PrivacyAccountant(mode="central", noise_multiplier=1.0, sampling_probability=1.0, delta=1e-5,
                                budget=budget)
    for rnd in (1, 2, 3):
        limited.before_round(rnd)
    with pytest.raises(BudgetExhausted) as caught:
        limited.before_round(4)
    assert str(caught.value) == (f"privacy budget ε={budget:g} would be exceeded in round 4 "
                                 f"(ε would reach {guard.epsilon(4):.3f}); stopping after round 3")
    guard.before_round(10_000)  # no budget: never stops


def test_a_fresh_accountant_continues_where_a_resumed_run_left_off():
    before = PrivacyAccountant(mode="central", noise_multiplier=0.9, sampling_probability=0.3, delta=1e-5)
    seen = [before.round_extras(k)["epsilon"] for k in (1, 2, 3)]
    after = PrivacyAccountant(mode="central", noise_multiplier=0.9, sampling_probability=0.3, delta=1e-5)
    assert after.round_extras(4)["epsilon"] > seen[-1]
    assert [after.epsilon(k) for k in (1, 2, 3)] == seen


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"mode": "global"}, "mode"),
        ({"noise_multiplier": 0.0}, "noise multiplier"),
        ({"sampling_probability": 1.5}, "sampling probability"),
        ({"delta": 0.0}, "delta"),
        ({"budget": -1.0}, "budget"),
    ],
)
def test_bad_parameters_are_config_errors(kw, message):
    base = {"mode": "central", "noise_multiplier": 1.0, "sampling_probability": 0.5, "delta": 1e-5}
    with pytest.raises(ConfigError, match=message):
        PrivacyAccountant(**{**base, **kw})

