"""depth_profile on the seeds' five-layer scalar chain, under both gradient conventions."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from gradguard.analysis import depth_profile
from gradguard.errors import ConfigError, UnsupportedModelError


def chain(w: float, layers: int = 5) -> nn.Sequential:
    """a_k = w * a_{k-1}, no activation, as in the seeds' example."""
    model = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(layers)]).double()
    with torch.no_grad():
        for layer in model:
            assert isinstance(layer, nn.Linear)
            layer.weight.fill_(w)
    return model


def profile(w: float, layers: int = 5):  # type: ignore[no-untyped-def]
    x = torch.ones(1, 1, dtype=torch.float64)
    return depth_profile(chain(w, layers), x, None, lambda out, _y: out.sum())  # L = a_5


def test_w_2_signal_16_8_4_2_1_and_weight_gradients_16() -> None:
    result = profile(2.0)
    assert result.signal == (16.0, 8.0, 4.0, 2.0, 1.0)  # dL/da_k, the output convention
    assert result.weight_grads == (16.0,) * 5  # dL/dW_k = dL/da_k * a_{k-1} = 2^(5-k) 2^(k-1)
    assert result.input_signal == (32.0, 16.0, 8.0, 4.0, 2.0)
    assert [layer.growth for layer in result.layers] == [2.0] * 5
    assert result.growth_factor == pytest.approx(2.0)
    assert result.amplification == 16.0
    assert result.loss == 32.0  # forward: 1 -> 2 -> 4 -> 8 -> 16 -> 32
    # Extrapolation of the seed: 20 layers give 2^19 = 524,288 at layer 1.
    assert profile(2.0, layers=20).signal[0] == 524_288.0


def test_w_1_all_ones() -> None:
    result = profile(1.0)
    assert result.signal == (1.0,) * 5
    assert result.weight_grads == (1.0,) * 5
    assert result.growth_factor == pytest.approx(1.0)


def test_w_0_5_under_both_conventions() -> None:
    result = profile(0.5)
    # Output convention (this library's): dL/da_k.
    assert result.signal == (0.0625, 0.125, 0.25, 0.5, 1.0)
    # Input convention: dL/d(input of layer k); the seeds print this line for w = 0.5, rounded.
    assert result.input_signal == (0.03125, 0.0625, 0.125, 0.25, 0.5)
    assert [round(v, 4) for v in result.input_signal if v is not None] == [
        0.0312,
        0.0625,
        0.125,
        0.25,
        0.5,
    ]
    assert result.weight_grads == (0.0625,) * 5


def test_seed_questions_w_3_and_w_0_9() -> None:
    assert profile(3.0).signal[0] == pytest.approx(81.0)
    assert profile(0.9).signal[0] == pytest.approx(0.6561)


def test_mlp_and_cnn_with_activations_and_shared_layers() -> None:
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 3, padding=1)
            self.norm = nn.LayerNorm(8)
            self.shared = shared
            self.out = nn.Linear(4, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = torch.relu(self.norm(self.conv(x).flatten(1)))
            h = torch.tanh(self.shared(h[:, :4]))
            h = torch.tanh(self.shared(h))
            return self.out(h)

    net = Net()
    x = torch.randn(3, 1, 4)
    result = depth_profile(net, x, torch.zeros(3, 1), nn.functional.mse_loss)
    assert [layer.name for layer in result.layers] == ["conv", "norm", "shared", "shared#2", "out"]
    assert [layer.module_type for layer in result.layers][:2] == ["Conv1d", "LayerNorm"]
    reference = nn.functional.mse_loss(net(x), torch.zeros(3, 1))
    grads = torch.autograd.grad(
        reference, [net.out.weight, net.out.bias, net.shared.weight, net.shared.bias]
    )
    assert result.layers[-1].weight_grad_norm == pytest.approx(
        float(torch.cat([grads[0].flatten(), grads[1]]).norm()), rel=1e-6
    )
    shared_norm = float(torch.cat([grads[2].flatten(), grads[3]]).norm())
    assert result.layers[2].weight_grad_norm == pytest.approx(shared_norm, rel=1e-6)
    assert all(p.grad is None for p in net.parameters())
    only_linear = depth_profile(
        net,
        x,
        torch.zeros(3, 1),
        nn.functional.mse_loss,
        include=lambda _n, m: isinstance(m, nn.Linear),
    )
    assert [layer.name for layer in only_linear.layers] == ["shared", "shared#2", "out"]
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["kind"] == "depth_profile" and len(data["layers"]) == 5
    assert "shared#2" in str(result)


def test_integer_inputs_have_no_input_gradient() -> None:
    net = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 1))
    result = depth_profile(net, torch.tensor([1, 2]), None, lambda o, _y: o.sum())
    assert result.layers[0].input_grad_norm is None and result.layers[0].growth is None
    assert result.layers[1].input_grad_norm is not None


def test_errors() -> None:
    with pytest.raises(UnsupportedModelError):
        depth_profile(lambda x: x, torch.ones(1), None, lambda o, _y: o.sum())  # type: ignore[arg-type]
    with pytest.raises(UnsupportedModelError, match=r"nn\.Linear"):
        depth_profile(nn.ReLU(), torch.ones(2), None, lambda o, _y: o.sum())
    with pytest.raises(ConfigError, match="scalar"):
        depth_profile(nn.Linear(2, 2), torch.ones(2), None, lambda o, _y: o)
