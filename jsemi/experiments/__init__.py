"""The paper's experiments as package code: configurations, the demo, Algorithm 1 and S1 rows, sweeps, Table S5.

- ``configs``: ``Experiment`` and the named set (``EXPERIMENTS``: "cpu" and "paper-<model>-<dataset>");
- ``pipeline``: data, pretraining both networks, Algorithm 1 rows (shared by everything below);
- ``pretrain``, ``algorithm1``, ``algorithm_s1``, ``sweeps``, ``table_s5``, ``demo`` (+ ``demo_report``);
- ``timing``: progress lines and per-stage wall times.

The command line lives in ``jsemi.cli`` (``jsemi demo``, ``jsemi reproduce``, ``jsemi sweep``,
``jsemi s1``, ``jsemi table-s5``).
"""

from jsemi.experiments.configs import EXPERIMENTS, Experiment, PretrainSpec, get_experiment, load_experiment

__all__ = ["EXPERIMENTS", "Experiment", "PretrainSpec", "get_experiment", "load_experiment"]
