"""Compiled adversarial attacks with one calling convention.

Every attack is ``attack(logits_fn, x, y, key, threat, **settings) -> x_adv`` where
``logits_fn`` maps float32 NHWC images in [0, 1] to (B, K) scores (any differentiable JAX
function: a model in eval mode, or an intermediate layer followed by a linear probe),
``y`` are int labels, ``key`` an explicit jax PRNG key and ``threat`` a ``LinfBall(eps)``
or ``L2Ball(eps)``.  Outputs satisfy ``||x_adv - x|| <= eps`` in the threat's norm and lie
in [0, 1] (up to float32 rounding, ~1e-7 relative).  Attacks are traceable (call them
inside your own ``jax.jit``) and, called with concrete arrays, run jit-compiled; reuse the
same ``logits_fn`` object to reuse the compiled code.

BatchNorm: pass a ``logits_fn`` that applies the model with ``train=False`` (e.g.
``jsemi.models.logits_fn(model, variables)``); attacks never touch ``batch_stats``.

Attacks: fgsm, ifgsm, pgd (L-inf / L2, restarts), cw_l2, apgd (CE / DLR), apgd_t, fab_t,
square (L-inf), autoattack ("standard", "rand", "custom").  ``get_attack(name, threat,
**settings)`` binds one by name; ``robust_accuracy`` evaluates a dataset in batches and
``robust_accuracy_eps_grid`` a whole eps grid in one compiled call per batch.
"""

from jsemi.attacks.threat import L2Ball, LinfBall, Threat, as_threat, make_threat
from jsemi.attacks import losses
from jsemi.attacks.losses import ce, cw, dlr, dlr_targeted, margin
from jsemi.attacks.pgd import fgsm, ifgsm, pgd
from jsemi.attacks.apgd import apgd, apgd_t
from jsemi.attacks.cw import cw_l2
from jsemi.attacks.fab import fab_t
from jsemi.attacks.square import square
from jsemi.attacks.autoattack import autoattack, autoattack_report
from jsemi.attacks.evaluate import robust_accuracy, robust_accuracy_eps_grid, robust_correct
from jsemi.attacks.registry import ATTACK_NAMES, default_threat, get_attack

__all__ = [
    "LinfBall", "L2Ball", "Threat", "as_threat", "make_threat",
    "losses", "ce", "cw", "dlr", "dlr_targeted", "margin",
    "fgsm", "ifgsm", "pgd", "apgd", "apgd_t", "cw_l2", "fab_t", "square", "autoattack", "autoattack_report",
    "robust_accuracy", "robust_accuracy_eps_grid", "robust_correct",
    "ATTACK_NAMES", "get_attack", "default_threat",
]
