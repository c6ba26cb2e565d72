"""How the CLI talks to a person at a terminal: our own lines at INFO, library logs and
TensorFlow's native start-up noise only when they matter (-v shows everything, -q only errors).
Applied at the CLI entry alone: the library never touches global logging."""
from __future__ import annotations

import os
import sys
import warnings


# Library log lines that say nothing a user can act on (each checked by hand): TFX's local
# MLMD resolver lacks property predicates and falls back to a full query; our Examples carry
# tf.Examples without TFX's payload_format property (the default); Beam's in-process runner
# is the intended default; TFX announces every split it reads.
_HARMLESS = ("property_predicate is not supported", "does not have payload_format custom property",
             "Missing pipeline option (runner)", "Reading from pattern ")


# Lines TensorFlow's C++ runtime writes straight to stderr when it loads on a CPU host
# (newer releases log through absl and ignore TF_CPP_MIN_LOG_LEVEL for some of them).
_HARMLESS_NATIVE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
                    "Could not find cuda drivers", "Unable to register cuFFT factory",
                    "Unable to register cuDNN factory", "Unable to register cuBLAS factory",
                    "computation placer already registered", "TF-TRT Warning", "cuda_executor",
                    "failed call to cuInit", "This TensorFlow binary is optimized to use available CPU")
VERBOSITY = 0


def import_quietly(module: str) -> None:
    """Import `module` with file descriptor 2 captured, then write back only the lines that
    are not TensorFlow's known start-up noise (at -v everything passes untouched)."""
    import importlib

    if VERBOSITY > 0 or module in sys.modules:
        importlib.import_module(module)
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            importlib.import_module(module)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not any(h in line for h in _HARMLESS_NATIVE):
                    sys.stderr.write(line + "\n")
            sys.stderr.flush()


def _drop_known_harmless(record) -> bool:
    msg = record.getMessage() if record.args else str(record.msg)
    return not any(h in msg for h in _HARMLESS)


def quiet(verbosity: int = 0) -> None:
    """Logging for a person at a terminal: our own lines at INFO, libraries' only when they
    matter. -v shows library INFO and warnings, -q only errors. Applied at the CLI entry
    alone (the library never touches global logging)."""
    import logging

    global VERBOSITY
    VERBOSITY = verbosity
    level = {-1: logging.ERROR, 0: logging.WARNING}.get(verbosity, logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    # TensorFlow's C++ log: at the default level even its "E" lines are CUDA probes on a CPU
    # host (cuFFT/cuDNN/cuBLAS factories, no GPU found): -v shows them.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3" if verbosity <= 0 else "0"
    if verbosity <= 0:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_drop_known_harmless)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # Library chatter a user cannot act on; the errors they raise still end the command
        # with one line. Beam logs every failing DoFn with its traceback before re-raising.
        for name, lib_level in (("apache_beam", logging.CRITICAL), ("absl", logging.ERROR),
                                ("tensorflow", logging.ERROR), ("ml_metadata", logging.ERROR),
                                ("tfx", logging.WARNING)):
            logging.getLogger(name).setLevel(max(lib_level, level))
