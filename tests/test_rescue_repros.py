"""The numerical repros of the rescue issue (shared/repro), each as a test of what it expects.

Every test here failed on the code before the fix it names; the scripts' own stories are in the
docstrings of the tests.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard.errors import ConfigError, TrainingDivergedError
from gradguard.policy import EscalationPolicy
from gradguard.records import ActionKind, Observation, Reason


def _fp16_step(m: nn.Module, scaler: torch.amp.GradScaler, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.float16):
        out = m(x)
    loss = nn.functional.mse_loss(out.float(), torch.randn(x.shape[0], 1))
    scaler.scale(loss).backward()
    return loss


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


@pytest.mark.parametrize("init_scale", [2.0**32, 2.0**40])
def test_a_scaler_warming_up_from_a_huge_scale_is_not_a_fault(init_scale: float) -> None:
    """repro_scaler_warmup_counted_as_faults: Megatron's 2**32 needs ~27 halvings."""
    torch.manual_seed(0)
    m = _mlp()
    o = torch.optim.Adam(m.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    g = gg.Guard(m, o, scaler=scaler)
    for _ in range(60):
        o.zero_grad()
        g.step(_fp16_step(m, scaler, torch.randn(16, 8) * 100))
    c = g.counters
    assert c["scaler_overflows"] >= 20  # more than the old streak limit
    assert c["rollbacks"] == c["backoffs"] == c["clipped"] == 0 and g.lr_scale == 1.0


def test_intermittent_inf_under_a_scaler_counts_as_faults_and_keeps_the_scale() -> None:
    """repro_scaler_intermittent_inf: the scale fell to 3e-20 and every gradient to zero."""
    torch.manual_seed(0)
    m = _mlp()
    o = torch.optim.SGD(m.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    g = gg.Guard(m, o, scaler=scaler)
    zero_steps = 0
    for t in range(160):
        o.zero_grad()
        loss = _fp16_step(m, scaler, torch.randn(16, 8))
        if 40 <= t < 120 and t % 2 == 0:
            m[0].weight.grad[0, 0] = math.inf
        if t >= 120:
            zero_steps += all(float(p.grad.abs().max()) == 0.0 for p in m.parameters())
        g.step(loss)
    assert zero_steps == 0
    assert scaler.get_scale() >= 1.0  # bounded halvings, not 2**-65
    assert g.counters["backoffs"] + g.counters["rollbacks"] >= 1  # escalated as faults


def test_a_rollback_restores_the_scaler_of_its_snapshot() -> None:
    """repro_scaler_not_restored_on_rollback: the restored weights met a collapsed scale."""
    torch.manual_seed(0)
    m = _mlp()
    o = torch.optim.SGD(m.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    g = gg.Guard(m, o, scaler=scaler, snapshot_every=10)
    for _ in range(30):
        o.zero_grad()
        g.step(_fp16_step(m, scaler, torch.randn(16, 8)))
    key = g.snapshot()
    saved = g.store.load(key)["scaler"]["scale"]
    scaler.update(new_scale=1e-30)  # as if something had ruined it since
    for _ in range(2):  # two non-finite losses in a row: the weights are bad, roll back
        o.zero_grad()
        _fp16_step(m, scaler, torch.randn(16, 8))
        g.step(torch.tensor(math.nan))
    assert g.counters["rollbacks"] == 1 and scaler.get_scale() == saved


def test_a_script_that_unscaled_for_its_own_clip_is_not_unscaled_twice() -> None:
    """repro_scaler (nanoGPT order): 'unscale_() has already been called' at step 0."""
    torch.manual_seed(0)
    net = nn.Linear(16, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    guard = gg.Guard(net, opt, scaler=scaler)
    x = torch.randn(64, 16)
    for _ in range(3):
        opt.zero_grad()
        loss = _fp16_step(net, scaler, x)
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        record = guard.step(loss)
        assert record.applied and math.isfinite(record.total_norm) and record.total_norm <= 1.0001


def test_a_non_finite_weight_that_never_reaches_the_loss_is_rolled_back() -> None:
    """repro_nonfinite_param_not_rolled_back: an Inf embedding row stayed Inf for good."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = gg.Guard(model, opt, snapshot_every=10)
    reasons = []
    for t in range(80):
        if t == 30:
            with torch.no_grad():
                model[0].weight[15] = math.inf  # a row the batches never look up
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(torch.randint(0, 10, (16, 2))), torch.randn(16, 1))
        loss.backward()
        reasons.append(guard.step(loss).reason)
    assert Reason.NONFINITE_PARAM in reasons[30:41]  # caught at the next parameter-norm check
    assert guard.counters["rollbacks"] == 1 and bool(torch.isfinite(model[0].weight).all())


def test_fp16_adam_weights_are_left_finite_and_the_optimizer_is_named() -> None:
    """repro_fp16_adam_nan_after_applied_step: eps=1e-8 rounds to 0 in float16."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(16, 1)).half()
    o = torch.optim.Adam(m.parameters(), lr=1e-3)
    with pytest.warns(UserWarning, match=r"Adam's eps=1e-08 rounds to 0 with float16 weights"):
        g = gg.Guard(m, o, snapshot_every=10)  # told before the first NaN, not after the abort
    messages = []

    def train() -> None:
        for _ in range(100):
            o.zero_grad()
            x = torch.randint(0, 50, (4, 2))
            loss = nn.functional.mse_loss(m(x).float(), torch.randn(4, 1))
            loss.backward()
            record = g.step(loss)
            if record.reason is Reason.NONFINITE_PARAM:
                messages.append(record.message)

    with pytest.raises(TrainingDivergedError) as aborted:
        train()
    assert all(bool(torch.isfinite(p).all()) for p in m.parameters())
    # Rolled back at the first sight of the non-finite weights, with the cause named, and the
    # abort's text names it too, before the general advice (lower the rate, clip...), which
    # would not help here.
    assert messages and "eps=1e-08" in messages[0] and "Adam" in messages[0]
    text = str(aborted.value)
    assert "Found: " in text and "raise eps to 1e-4" in text
    assert text.index("Found: ") < text.index("What to try")


@pytest.mark.parametrize(
    ("dtype", "eps"), [(torch.bfloat16, 1e-8), (torch.float32, 1e-8), (torch.float16, 1e-4)]
)
def test_an_eps_that_float16_keeps_or_a_wider_dtype_raises_no_warning(
    dtype: torch.dtype, eps: float
) -> None:
    m = nn.Linear(4, 1).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gg.Guard(m, torch.optim.Adam(m.parameters(), eps=eps))


def test_a_skipped_fault_before_any_healthy_history_clips_nothing_after_it() -> None:
    """repro_early_fault_clip: one NaN at step 2 clipped the next ~20 steps to 2%."""

    def run(fault_at: int, guarded: bool) -> tuple[float, list[float]]:
        torch.manual_seed(0)
        x, w = torch.randn(512, 20), torch.randn(20, 1)
        y = x @ w + 0.1 * torch.randn(512, 1)
        torch.manual_seed(1)
        net = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 1))
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        guard = gg.Guard(net, opt) if guarded else None
        coefs = []
        for step in range(60):
            idx = torch.arange(step * 8, step * 8 + 64) % 512
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x[idx]), y[idx])
            loss.backward()
            if step == fault_at:
                net[0].weight.grad[0, 0] = math.nan
            if guard is not None:
                coefs.append(guard.step(loss).clip_coef)
            elif step != fault_at:
                opt.step()
        with torch.no_grad():
            return float(nn.functional.mse_loss(net(x), y)), coefs

    by_hand, _ = run(2, guarded=False)
    guarded, coefs = run(2, guarded=True)
    assert coefs[3:] == [1.0] * 57
    assert guarded == pytest.approx(by_hand, rel=1e-6)


def test_a_loss_converging_to_zero_is_never_a_divergence() -> None:
    """repro_false_abort_near_zero_loss: wobbles of 1e-9 around 1e-14 were 'loss spikes'."""
    policy = EscalationPolicy()
    loss = 1.0
    kinds = []
    for t in range(3000):
        loss = max(loss * 0.99, 1e-14)
        wobble = 1e-9 * (t % 7 == 0) + 1e-6 * (t % 97 == 0)  # float noise far below the start
        obs = Observation(step=t, loss=loss + wobble, total_norm=1e-3, finite=True)
        kinds.append(policy.decide(obs).action.kind)
    assert ActionKind.ROLLBACK not in kinds and ActionKind.ABORT not in kinds


def test_a_real_run_converged_to_float_noise_is_not_aborted() -> None:
    """repro_false_abort_near_zero_loss with the guard's detectors: at ~1e-14 the loss wobbles
    to 1e-9..1e-5, which the loss-spike and drift rules took for thousandfold jumps; three
    rollbacks and an abort followed at step 7645 of a run with no fault."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    o = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = gg.Guard(m, o, sinks=[])
    x, y = torch.randn(64, 16), torch.randn(64, 1)
    for t in range(7800):
        i = (t * 8) % 56
        o.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(m(x[i : i + 8]), y[i : i + 8])
        loss.backward()
        g.step(loss)
    assert float(loss.detach()) < 1e-9
    assert g.counters["rollbacks"] == 0 and g.counters["skipped"] == 0


def test_lbfgs_is_driven_through_its_closure_and_takes_the_backed_off_rate() -> None:
    """repro_lbfgs and repro_lbfgs_backoff: Guard.step could not drive LBFGS at all."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    base = nn.Linear(4, 1)

    def one_step(lr: float, scale: float | None) -> torch.Tensor:
        net = nn.Linear(4, 1)
        net.load_state_dict(base.state_dict())
        opt = torch.optim.LBFGS(net.parameters(), lr=lr, max_iter=1)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            return loss

        if scale is None:
            opt.step(closure)
        else:
            guard = gg.Guard(net, opt, snapshot_every=None)
            guard.policy._s.lr_scale = scale  # as after one backoff
            record = guard.step(closure=closure)
            assert record.applied and record.lr == pytest.approx(lr * scale)
        return net.weight.detach().clone()

    assert torch.equal(one_step(8.0, 1.0), one_step(8.0, None))  # healthy: bit-identical
    assert torch.allclose(one_step(8.0, 0.5), one_step(4.0, None))  # the backoff reaches LBFGS
    net = nn.Linear(4, 1)
    guard = gg.Guard(net, torch.optim.LBFGS(net.parameters()))
    with pytest.raises(ConfigError, match=r"guard.step\(closure=closure\)"):
        guard.step(torch.tensor(1.0))
