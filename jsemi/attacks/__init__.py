"""Compiled adversarial attacks with one calling convention.

Every attack is ``attack(logits_fn, x, y, key, threat, **settings) -> x_adv`` where
``logits_fn`` maps float32 NHWC images in [0, 1] to (B, K) scores (any differentiable JAX
function: a model in eval mode, or an intermediate layer followed by a linear probe),
``y`` are int labels, ``key`` an explicit jax PRNG key and ``threat`` a ``LinfBall(eps)``
or ``L2Ball(eps)``.  Outputs satisfy ``||x_adv - x|| <= eps`` in the threat's norm and lie
in [0, 1].  Attacks are traceable (call them inside your own ``jax.jit``) and, called with
concrete arrays, run jit-compiled.

BatchNorm: pass a ``logits_fn`` that applies the model with ``train=False`` (e.g.
``jsemi.models.logits_fn(model, variables)``); attacks never touch ``batch_stats``.
"""

from jsemi.attacks.threat import L2Ball, LinfBall, Threat, as_threat
from jsemi.attacks import losses
from jsemi.attacks.losses import ce, cw, dlr, dlr_targeted, margin
from jsemi.attacks.pgd import fgsm, ifgsm, pgd
from jsemi.attacks.evaluate import robust_accuracy

__all__ = [
    "LinfBall",
    "L2Ball",
    "Threat",
    "as_threat",
    "losses",
    "ce",
    "cw",
    "dlr",
    "dlr_targeted",
    "margin",
    "fgsm",
    "ifgsm",
    "pgd",
    "robust_accuracy",
]
