"""Resolver strategies that look back to an *earlier span* than the one being processed.

A run on span N reuses things from the latest run on a span before N:

  EarlierSpanBlessedModelStrategy   the latest blessed Model whose training span < N (its
                                    vocabulary for ingestion, its weights for warm start)
  EarlierSpanStatisticsStrategy     the statistics of the latest span < N that passed
                                    validation (the drift baseline)

Looking strictly before N (instead of "the latest") keeps a re-run of span N identical to the
first run of span N: the same inputs, so TFX's cache hits. The no-regression check of the
evaluator still compares against the latest blessed model (LatestBlessedModelStrategy).
"""
from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver

import ml_metadata as mlmd


def _int(artifact, name: str, default: int = -1) -> int:
    try:
        if name in artifact.mlmd_artifact.custom_properties:
            return artifact.get_int_custom_property(name)
    except (AttributeError, KeyError):
        pass
    return default


class EarlierSpanBlessedModelStrategy(resolver.ResolverStrategy):
    """Channels `model` (Model) and `model_blessing` (ModelBlessing); config `span`."""

    def __init__(self, span: int):
        self._span = int(span)

    def resolve_artifacts(self, store: mlmd.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]) -> Optional[Dict[str, List[types.Artifact]]]:
        models = input_dict.get("model", [])
        blessings = input_dict.get("model_blessing", [])
        blessed = {_int(b, "current_model_id"): b for b in blessings
                   if _int(b, "blessed", 0) == 1 and 0 <= _int(b, "span") < self._span}
        for model in sorted(models, key=lambda a: a.id, reverse=True):
            if model.id in blessed:
                return {"model": [model], "model_blessing": [blessed[model.id]]}
        return {"model": [], "model_blessing": []}


class EarlierSpanStatisticsStrategy(resolver.ResolverStrategy):
    """Channels `statistics` (ExampleStatistics) and `report` (ptum.ValidationReport); config `span`."""

    def __init__(self, span: int):
        self._span = int(span)

    def resolve_artifacts(self, store: mlmd.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]) -> Optional[Dict[str, List[types.Artifact]]]:
        stats = {a.id: a for a in input_dict.get("statistics", [])}
        reports = [r for r in input_dict.get("report", [])
                   if _int(r, "passed", 0) == 1 and 0 <= _int(r, "span") < self._span
                   and _int(r, "statistics_id") in stats]
        if not reports:
            return {"statistics": [], "report": []}
        best = max(reports, key=lambda r: (_int(r, "span"), r.id))
        return {"statistics": [stats[_int(best, "statistics_id")]], "report": [best]}
