"""lmlib: train decoder-only language models in JAX."""


def __getattr__(name: str):
    # Lazy, so that `import lmlib.data...` (e.g. in prepare's worker processes) does not import JAX.
    if name in ("load_model", "LoadedModel"):
        from lmlib import inference
        return getattr(inference, name)
    raise AttributeError(f"module 'lmlib' has no attribute {name!r}")
