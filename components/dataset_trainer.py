"""The stock TFX Trainer, told where its Examples' sequence dataset is.

SequenceIngestion records the dataset it wrote (manifest, vocabulary, splits) on the Examples
artifact as the custom property `ptum_dataset`. This executor, used through
`Trainer(custom_executor_spec=DATASET_TRAINER)`, reads that property from the Examples it was
given and passes it to `run_fn` as `fn_args.custom_config["dataset"]`: the module files open
the dataset from that path instead of working it out from where the Examples files lie.
Everything else is TFX's GenericExecutor, unchanged.
"""
from __future__ import annotations

from typing import Any, Dict, List

from tfx.components.trainer.executor import GenericExecutor
from tfx.dsl.components.base import executor_spec
from tfx.utils import json_utils

DATASET_PROPERTY = "ptum_dataset"
DATASET_KEY = "dataset"


def dataset_of(examples: List[Any]) -> str:
    """The sequence dataset the Examples artifact(s) were written from (one, or an error)."""
    paths = {a.get_string_custom_property(DATASET_PROPERTY) for a in examples}
    paths.discard("")
    if len(paths) != 1:
        uris = ", ".join(a.uri for a in examples) or "none"
        raise ValueError(f"Trainer: the Examples ({uris}) name {len(paths)} sequence datasets in their "
                         f"{DATASET_PROPERTY!r} property, expected 1 (Examples not written by SequenceIngestion, "
                         "or by a version before it recorded the dataset: run the ingestion again)")
    return paths.pop()


class DatasetTrainerExecutor(GenericExecutor):
    def Do(self, input_dict: Dict[str, List[Any]], output_dict: Dict[str, List[Any]],
           exec_properties: Dict[str, Any]) -> None:
        custom = json_utils.loads(exec_properties.get("custom_config") or "null") or {}
        custom[DATASET_KEY] = dataset_of(input_dict.get("examples", []))
        super().Do(input_dict, output_dict, dict(exec_properties, custom_config=json_utils.dumps(custom)))


DATASET_TRAINER = executor_spec.ExecutorClassSpec(DatasetTrainerExecutor)
