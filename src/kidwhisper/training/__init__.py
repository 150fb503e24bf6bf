"""The training layer: one run set up torchtune-style, the loop, schedule and KL anchor,
checkpoints, distribution, faults, experiment folders and their results.

Imports anything below it (inference, models, data, leaves); never submission or the CLI.
"""
