"""The beta/rho balancing rule: clipping, the 51-sample window, the floor and state round trips."""

import pytest
import torch

from vo_node.train.balance import LossBalancer, ProbeNorms, find_parameter, probe_gradient_norms


def norms(pose: float, flow: float, translation: float = 1.0, rotation: float = 1.0) -> ProbeNorms:
    return ProbeNorms(flow=flow, pose=pose, translation=translation, rotation=rotation)


def test_beta_sequence_with_clipping():
    balancer = LossBalancer()
    # Sample 100 is clipped to 10 * beta = 10; history [10].
    assert balancer.update(norms(100.0, 1.0))[0] == pytest.approx(10.0)
    # Sample 1000 is clipped to 10 * 10 = 100; history [10, 100].
    assert balancer.update(norms(1000.0, 1.0))[0] == pytest.approx(55.0)
    # Sample 0.001 is clipped up to 55 / 10 = 5.5; history [10, 100, 5.5].
    assert balancer.update(norms(0.001, 1.0))[0] == pytest.approx(115.5 / 3)
    # An unclipped sample enters as is: 50 lies in [3.85, 385].
    assert balancer.update(norms(50.0, 1.0))[0] == pytest.approx(165.5 / 4)


def test_beta_window_keeps_last_51_samples():
    balancer = LossBalancer()
    # Samples 1, 2, 3, ... never hit the clip bounds, since the mean of 1..k is (k + 1) / 2.
    for sample in range(1, 52):
        beta, _ = balancer.update(norms(float(sample), 1.0))
    assert beta == pytest.approx(26.0)  # mean of 1..51
    for sample in range(52, 61):
        beta, _ = balancer.update(norms(float(sample), 1.0))
    assert len(balancer.beta_history) == 51
    assert beta == pytest.approx(35.0)  # mean of 10..60


def test_rho_uses_translation_over_rotation():
    balancer = LossBalancer()
    _, rho = balancer.update(norms(1.0, 1.0, translation=4.0, rotation=2.0))
    assert rho == pytest.approx(2.0)
    _, rho = balancer.update(norms(1.0, 1.0, translation=1.0, rotation=1000.0))
    # Sample 0.001 is clipped up to rho / 10 = 0.2; history [2, 0.2].
    assert rho == pytest.approx(1.1)


def test_norms_are_floored():
    balancer = LossBalancer(norm_floor=1e-6)
    # Flow norm 0 becomes 1e-6: the sample 1e-5 / 1e-6 = 10 sits exactly on the upper bound.
    beta, rho = balancer.update(norms(1e-5, 0.0, translation=0.0, rotation=0.0))
    assert beta == pytest.approx(10.0)
    assert rho == pytest.approx(1.0)


def test_update_schedule():
    balancer = LossBalancer(interval=20)
    assert not balancer.is_due(0)
    assert balancer.is_due(20)
    assert not balancer.is_due(21)
    assert balancer.is_due(40)
    assert not LossBalancer(enabled=False).is_due(20)


def test_state_round_trip():
    balancer = LossBalancer()
    for sample in (3.0, 5.0, 0.5):
        balancer.update(norms(sample, 1.0, translation=sample, rotation=2.0))
    restored = LossBalancer()
    restored.load_state_dict(balancer.state_dict())
    assert restored.beta == balancer.beta
    assert restored.rho == balancer.rho
    assert list(restored.beta_history) == list(balancer.beta_history)
    assert restored.update(norms(7.0, 1.0)) == balancer.update(norms(7.0, 1.0))


def test_probe_norms_match_known_gradients():
    layer = torch.nn.Linear(3, 2, bias=False)
    x = torch.tensor([1.0, 2.0, 2.0])
    output = layer(x)
    losses = {"first": output[0], "second": 3.0 * output.sum(), "constant": torch.tensor(1.0)}
    result = probe_gradient_norms(losses, layer.weight)
    # d output[0] / d W has one row equal to x: norm |x| = 3.
    assert result["first"] == pytest.approx(3.0)
    # d (3 sum) / d W has two rows 3 x: norm 3 * 3 * sqrt(2).
    assert result["second"] == pytest.approx(9.0 * 2**0.5)
    assert result["constant"] == 0.0
    assert layer.weight.grad is None


def test_missing_probe_parameter_names_it():
    with pytest.raises(ValueError, match="no.such.weight"):
        find_parameter(torch.nn.Linear(2, 2), "no.such.weight")
