"""Estimators: mutual information (EDGE, KSG, Gaussian), class-conditional rho with its
permutation null, and the other dependence measures the paper records (HSIC, CKA,
connectivity, sensitivity). All mutual-information values are in bits."""

from jsemi.estimators.edge import EdgeRandomness, edge_dims, edge_k, edge_mi, edge_randomness
from jsemi.estimators.ksg import ksg_mi
from jsemi.estimators.gaussian import gaussian_mi
from jsemi.estimators.reduction import Reduction, fit_reduction, reduce
from jsemi.estimators.dependence import class_hsic_cka, cka, connectivity, hsic, sensitivity
from jsemi.estimators.conditional import conditional_mi, conditional_mi_with_null
from jsemi.estimators.semirobust import fit_probe, layer_gamma, layer_gammas, ridge_solve
from jsemi.estimators.network import adversarial_examples, layer_sensitivities, network_rhos
from jsemi.estimators.bounds import BoundReport, bound_report
from jsemi.estimators.linear import algorithm_s1, algorithm_s1_sweep, fit_s1
