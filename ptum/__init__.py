"""PTUM user models: raw behavior logs -> pre-trained user embeddings.

The public API (see `ptum.api`), importable in one line:

    import ptum

    data = ptum.tokenize("logs/events.csv", "sequences/")         # files, a DataFrame or an Arrow table
    model = ptum.pretrain("demo", data, "user-model/", overrides=["train.epochs=1"])
    metrics = ptum.evaluate(model, data)                          # next-item metrics on the test split

`import ptum` stays light: the API is loaded on first use, and TensorFlow, JAX, Beam and TFX
only by the calls that need them.
"""
__version__ = "0.1.0"

_API = ("Model", "tokenize", "load_dataset", "load_config", "pretrain", "load_model", "evaluate", "embed_users",
        "finetune", "export_model")
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        from ptum import api

        return getattr(api, name)
    raise AttributeError(f"module 'ptum' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
