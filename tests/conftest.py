"""Shared fixtures: small generated logs, and helpers to tokenize them."""
import os
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def sample_logs(tmp_path_factory):
    """Generated logs (300 users, 120 items) with ~2% malformed rows."""
    from ptum.data.generate import generate

    out = str(tmp_path_factory.mktemp("logs"))
    stats = generate(out, users=300, items=120, seed=7, malformed_rate=0.02, mean_events=20)
    return out, stats


@pytest.fixture(scope="session")
def clean_dataset(tmp_path_factory):
    """A committed sequence dataset from clean generated logs (for model tests)."""
    from ptum.data.generate import generate
    from ptum.data.ingest import plan, reference

    logs = str(tmp_path_factory.mktemp("clean_logs"))
    generate(logs, users=400, items=150, seed=3, mean_events=18)
    out = str(tmp_path_factory.mktemp("clean_ds"))
    reference.run(plan.TokenizeOptions(inputs=[os.path.join(logs, "events.csv")], format="csv",
                                       output=out, items_catalog=os.path.join(logs, "items.csv")))
    return out, logs
