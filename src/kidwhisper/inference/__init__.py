"""The inference layer: decoding, batched transcription, the competition's WER, evaluation,
error analysis, transcription of files and data curation with a reference model.

Imports models, data and the leaf modules; never training, submission or the CLI.
"""
