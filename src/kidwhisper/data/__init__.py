"""The data layer: audio, text and tokens, manifests and the dataset, batches and sampling.

Imports only the leaf modules (config, schema, errors, device) and the model registries.
"""
