"""The text of the abort: what happened, then what to try, most effective first."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["abort_advice"]


def abort_advice(
    history: Sequence[str],
    *,
    lr: float | None = None,
    culprits: Sequence[str] = (),
    cause: str = "",
) -> str:
    """The text of the abort error: what happened, then what to try, most effective first.

    Args:
        history: the last escalation messages (``EscalationPolicy.history()``).
        lr: the learning rate of the first parameter group, echoed in the advice.
        culprits: names of the tensors with the largest gradients at the end.
        cause: what the guard found behind the trouble (an optimizer whose own update made the
            weights non-finite), shown before the general advice; empty when nothing was found.

    Returns:
        A multi-line message for :class:`~gradguard.errors.TrainingDivergedError`.

    References:
        Pascanu, Mikolov, Bengio (2013), On the difficulty of training recurrent neural networks
        (clipping, the spectral-radius condition); Saxe, McClelland, Ganguli (2014), Exact
        solutions to the nonlinear dynamics of learning in deep linear networks (orthogonal init);
        Miyato et al. (2018), Spectral normalization for generative adversarial networks.
    """
    lines = ["gradguard stopped the run: it kept failing after every rescue it is allowed."]
    lines += [f"  - {h}" for h in history[-4:]]
    if cause:
        lines.append(f"Found: {cause}")
    where = f" (largest gradients in {', '.join(culprits[:3])})" if culprits else ""
    lr_text = f"{lr:.3g}" if lr is not None else "the learning rate"
    lines += [
        f"What to try{where}:",
        f"  1. lower the learning rate: {lr_text} -> ten times smaller, with a warm-up;",
        "  2. clip gradients tighter: Guard(clip=0.5) or an adaptive clipper;",
        "  3. initialise recurrent and deep weights orthogonally (nn.init.orthogonal_) so their "
        "spectral radius starts near 1 (gradguard.remedies.init_for_stability);",
        "  4. bound the recurrent weights with spectral norm (torch.nn.utils.parametrizations."
        "spectral_norm);",
        "  5. for RNNs, truncate backpropagation through time to shorter segments (detach the "
        "hidden state every k steps).",
    ]
    return "\n".join(lines)
