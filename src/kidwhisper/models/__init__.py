"""The models layer: the variant and bundled-weight registries, the factory, short encoder
input, adapters (LoRA, freezing, merging), CTranslate2 import and export, averaging, memory.

Deliberately empty: importing a registry (`models.variants`, `models.bundled`) must not load
the factory, because every layer may read the registries.
"""
