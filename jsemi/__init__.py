"""jsemi: semirobust subnetworks in JAX/Flax.

Reference implementation of Craig, Andle, Nowak, Yasaei Sekeh,
"A Theoretical Perspective on Subnetwork Contributions to Adversarial Robustness"
(arXiv:2307.03803).  Sub-packages:

- ``jsemi.models``      Flax models with an ordered weight-layer registry.
- ``jsemi.partition``   path-based split of variables into fa / fb, optax masks.
- ``jsemi.data``        loaders returning float32 NHWC images in [0, 1].
- ``jsemi.train``       jitted standard / adversarial / masked training steps.
- ``jsemi.attacks``     compiled attacks (FGSM, PGD, C&W, AutoAttack, ...).
- ``jsemi.estimators``  semirobustness, mutual information, bounds, Algorithm S1.
- ``jsemi.algorithms``  Algorithm 1 (semirobust transfer trials).
"""

__version__ = "0.1.0"
