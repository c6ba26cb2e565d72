"""ptum-pipeline: PTUM user-embedding pre-training as Beam + Keras 3 + TFX pipelines."""
from setuptools import find_packages, setup

setup(
    name="ptum-pipeline",
    version="0.1.0",
    description="Pre-trained user models (PTUM) from raw behavior logs: Beam tokenization, "
    "Keras 3 pre-training, TFX pipelines, SavedModel serving and batch embedding export.",
    python_requires=">=3.10",
    packages=find_packages(include=["ptum", "ptum.*", "pipelines", "pipelines.*",
                                    "components", "components.*", "schemas"]),
    # Model config presets ship inside the package (`ptum pretrain --config beauty`); the
    # checkout's configs/ is a link to the same folder.
    package_data={"schemas": ["*.pbtxt", "*.json"], "ptum": ["configs/*.yaml"]},
    include_package_data=True,
    install_requires=[
        "numpy>=1.24",
        "pyarrow>=10",
        "pyyaml>=6",
        "keras>=3.3,<4",
        "pydantic>=2.5,<3",           # typed configs (ptum.config)
        "scikit-learn>=1.3",          # embedding probes (ptum evaluate-embeddings, the pipeline's gate)
    ],
    extras_require={
        # The pipeline stack: both supported TFX lines (1.16 legacy, 1.21 modern).
        "tfx": [
            "tfx>=1.16,<1.22",
            "tensorflow>=2.16,<2.22",
            "apache-beam[gcp]>=2.60,<3",
            "tensorflow-serving-api>=2.16,<2.22",   # the pusher's and tests' PredictRequest warm-up records
            "dill",
        ],
        "beam": ["apache-beam>=2.60,<3"],
        "jax": ["jax[cpu]>=0.4.30"],
        "dev": ["pytest>=7", "pytest-timeout", "matplotlib"],
        "airflow": ["apache-airflow>=2.8"],
        "kfp": ["kfp>=2.5"],
    },
    entry_points={"console_scripts": ["ptum=ptum.cli:main"]},
)
