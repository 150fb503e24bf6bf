"""Run this experiment: python -m experiments.experiment_025.main (or torchrun ... -m)."""

from kidwhisper.training.workflow import run_folder

run_folder(__file__)
