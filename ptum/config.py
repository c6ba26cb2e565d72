"""One typed configuration for the PTUM model and its training, loadable from YAML and
overridable from the command line; saved beside every model it produced."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

ATTENTION = ("bidirectional", "causal")
READOUTS = ("pooled", "position")
NBP_FROM = ("last", "every")
NEGATIVES = ("sampled", "shared", "full")
USER_VECTORS = ("pooled", "last")


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    """The network. Vocabulary sizes come from the dataset (set at training time)."""

    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    ff_dim: int = 0                # 0: 4 x embedding_dim
    dropout: float = 0.2
    max_len: int = 50
    attention: str = "causal"      # bidirectional (PTUM, MBP) | causal (next-item)
    user_vector: str = "last"      # pooled (PTUM's attentive pooling) | last (hidden state)
    use_behavior: bool = True
    use_time: bool = True          # log2 time-gap buckets; switched off for datasets without time
    time_buckets: int = 32
    use_text: bool = False         # PTUM-style title encoder (needs the dataset's catalog)
    text_max_words: int = 16
    text_heads: int = 2
    num_items: int = 0             # filled from the dataset: reserved ids + vocabulary
    num_behaviors: int = 0
    num_words: int = 0
    future_positions: int = 2      # NBP's K (one future-position embedding per k)
    # The exported user embedding: "query" (the next-item query: readout + future-position
    # embedding) or "profile" (the history's item bag through its own item embeddings + a
    # projection of the mean hidden state; scored against its own item table + bias; trained
    # by objective.bag).
    user_embedding: str = "query"
    profile_newest: bool = False   # the profile also sees the newest hidden state (recency)


@dataclass
class ObjectiveConfig:
    mbp: bool = False
    nbp: bool = True
    nbp_lambda: float = 1.0
    mask_rate: float = 0.2
    mbp_readout: str = "position"  # pooled (PTUM) | position (per masked position)
    k: int = 1                     # NBP: predict the next K behaviors
    nbp_from: str = "every"        # last (PTUM: from the last position) | every prefix (dense)
    negatives: str = "shared"      # sampled (PTUM's per-target candidates) | shared | full
    num_negatives: int = 256
    logq_correction: bool = True
    temperature: float = 1.0
    bag: bool = False              # set-level: the profile predicts the user's item bag (full softmax)
    bag_weight: float = 1.0
    bag_dropout: float = 0.5       # share of behaviors hidden from the encoder in the bag pass
    bag_future: int = 0            # W > 0: also cut the newest 1..W behaviors off and predict them (future window)
    bag_contrastive: float = 0.0   # c > 0: two dropped views of a history agree (InfoNCE, in-batch negatives)
    bag_contrastive_temperature: float = 0.1


@dataclass
class TrainConfig:
    batch_size: int = 128
    epochs: int = 50
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    clipnorm: float = 1.0
    patience: int = 5
    seed: int = 0
    length_buckets: List[int] = field(default_factory=lambda: [8, 16, 32])
    eval_every: int = 1
    eval_batch_size: int = 512
    checkpoint_every_steps: int = 0   # 0: at the end of every epoch only
    mixed_precision: str = "none"     # none | bf16 | fp16
    jit_compile: str = "auto"         # auto (on accelerators) | true | false
    steps_per_execution: int = 1
    max_train_seconds: float = 0.0    # 0: no limit
    deterministic: bool = False       # TF op determinism (exact resume; slower)
    # Early stopping / model selection: ndcg@10 (next item on valid), window_recall@10 (the
    # user embedding retrieves the valid window: needs a `window` split), auto (window_recall@10
    # for profile embeddings on window-split data, else ndcg@10).
    select_metric: str = "auto"


@dataclass
class PTUMConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "PTUMConfig":
        m, o = self.model, self.objective
        checks = [
            (m.attention in ATTENTION, f"model.attention must be one of {ATTENTION}"),
            (m.user_vector in USER_VECTORS, f"model.user_vector must be one of {USER_VECTORS}"),
            (o.mbp_readout in READOUTS, f"objective.mbp_readout must be one of {READOUTS}"),
            (o.nbp_from in NBP_FROM, f"objective.nbp_from must be one of {NBP_FROM}"),
            (o.negatives in NEGATIVES, f"objective.negatives must be one of {NEGATIVES}"),
            (o.mbp or o.nbp or o.bag, "enable at least one objective (mbp, nbp, bag)"),
            (m.user_embedding in ("query", "profile"), "model.user_embedding must be query or profile"),
            (not o.bag or m.user_embedding == "profile", "objective.bag trains the profile: set model.user_embedding=profile"),
            (0.0 <= o.bag_dropout < 1.0, "objective.bag_dropout must be in [0, 1)"),
            (o.bag_future >= 0, "objective.bag_future must be >= 0 (0: off)"),
            (o.bag_contrastive >= 0, "objective.bag_contrastive must be >= 0 (0: off)"),
            (o.bag_contrastive == 0 or o.bag_dropout > 0, "objective.bag_contrastive needs bag_dropout > 0 (the views)"),
            (o.bag_contrastive_temperature > 0, "objective.bag_contrastive_temperature must be > 0"),
            (self.train.select_metric in ("auto", "ndcg@10", "window_recall@10"),
             "train.select_metric must be auto, ndcg@10 or window_recall@10"),
            (m.embedding_dim % m.num_heads == 0, "embedding_dim must divide by num_heads"),
            (0.0 < o.mask_rate < 1.0, "objective.mask_rate must be in (0, 1)"),
            (1 <= o.k <= m.future_positions, "objective.k must be <= model.future_positions"),
            (not (o.nbp and o.nbp_from == "every" and m.attention == "bidirectional"),
             "NBP from every prefix needs causal attention (bidirectional attention sees the future)"),
            (self.train.mixed_precision in ("none", "bf16", "fp16"), "train.mixed_precision: none|bf16|fp16"),
            (str(self.train.jit_compile).lower() in ("auto", "true", "false"), "train.jit_compile: auto|true|false"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "PTUMConfig":
        d = d or {}
        unknown = set(d) - {"model", "objective", "train"}
        if unknown:
            raise ConfigError(f"unknown config section(s): {sorted(unknown)}")
        return cls(model=_build(ModelConfig, d.get("model"), "model"),
                   objective=_build(ObjectiveConfig, d.get("objective"), "objective"),
                   train=_build(TrainConfig, d.get("train"), "train")).validate()

    @classmethod
    def load(cls, path: Optional[str], overrides: Optional[List[str]] = None) -> "PTUMConfig":
        """From a YAML file or a preset name (`presets()`), then `section.key=value` overrides."""
        d: Dict[str, Any] = read_yaml(preset_path(path)) if path else {}
        for item in overrides or []:
            apply_override(d, item)
        return cls.from_dict(d)

    def dump_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def presets() -> List[str]:
    """The model configs shipped with the package (`ptum pretrain --config NAME`)."""
    return sorted(n[:-5] for n in os.listdir(PRESETS_DIR) if n.endswith(".yaml") and n != "pipeline.yaml")


def preset_path(name: str) -> str:
    """A config file: `name` itself when it is a path, else the shipped preset of that name."""
    if os.sep in name or "://" in name or name.endswith((".yaml", ".yml")) or os.path.exists(name):
        return name
    if name not in presets():
        raise ConfigError(f"{name}: no such config file or preset; presets: {', '.join(presets())}")
    return os.path.join(PRESETS_DIR, name + ".yaml")


def read_yaml(path: str) -> Dict[str, Any]:
    """A YAML mapping from a file (safe loader: no Python tags), or a ConfigError naming the
    file, line and problem."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "python/" in str(e):
            problem = f"{problem} (Python object tags are not allowed in configs)"
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(d).__name__}")
    return d


# Ranges of numeric settings, (section, key) -> (low, high, low inclusive, high inclusive);
# None: unbounded. Checked for every config, from YAML, overrides or a saved model.
RANGES = {
    ("model", "embedding_dim"): (1, None, True, True), ("model", "num_blocks"): (1, None, True, True),
    ("model", "num_heads"): (1, None, True, True), ("model", "ff_dim"): (0, None, True, True),
    ("model", "dropout"): (0.0, 1.0, True, False), ("model", "max_len"): (1, None, True, True),
    ("model", "time_buckets"): (1, None, True, True), ("model", "text_max_words"): (1, None, True, True),
    ("model", "text_heads"): (1, None, True, True), ("model", "future_positions"): (1, None, True, True),
    ("model", "num_items"): (0, None, True, True), ("model", "num_behaviors"): (0, None, True, True),
    ("model", "num_words"): (0, None, True, True),
    ("objective", "nbp_lambda"): (0.0, None, True, True), ("objective", "num_negatives"): (1, None, True, True),
    ("objective", "temperature"): (0.0, None, False, True), ("objective", "bag_weight"): (0.0, None, True, True),
    ("objective", "k"): (1, None, True, True),
    ("train", "batch_size"): (1, None, True, True), ("train", "epochs"): (1, None, True, True),
    ("train", "learning_rate"): (0.0, None, False, True), ("train", "weight_decay"): (0.0, None, True, True),
    ("train", "clipnorm"): (0.0, None, True, True), ("train", "patience"): (1, None, True, True),
    ("train", "eval_every"): (1, None, True, True), ("train", "eval_batch_size"): (1, None, True, True),
    ("train", "checkpoint_every_steps"): (0, None, True, True),
    ("train", "steps_per_execution"): (1, None, True, True),
    ("train", "max_train_seconds"): (0.0, None, True, True),
}


def _typed(section: str, key: str, t: str, v):
    """`v` as the field's type `t` (YAML 1.1 reads 1e-3 as a string), or a ConfigError naming
    section.key. bool accepts only true/false (a string "no" is not silently truthy)."""
    where = f"{section}.{key}"
    if t == "bool":
        if isinstance(v, bool):
            return v
        raise ConfigError(f"{where}: expected true or false, got {v!r}")
    if t == "int":
        if isinstance(v, bool):
            raise ConfigError(f"{where}: expected an integer, got {v!r}")
        if isinstance(v, int):
            return v
        if isinstance(v, str):
            try:
                return int(v)
            except ValueError:
                pass
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise ConfigError(f"{where}: expected an integer, got {v!r}")
    if t == "float":
        if isinstance(v, bool):
            raise ConfigError(f"{where}: expected a number, got {v!r}")
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {v!r}")
    if t == "str":
        if isinstance(v, bool):     # YAML reads `true` / `false` unquoted as booleans
            return "true" if v else "false"
        if isinstance(v, str):
            return v
        raise ConfigError(f"{where}: expected a string, got {v!r}")
    if t == "List[int]":
        if isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v):
            return list(v)
        raise ConfigError(f"{where}: expected a list of positive integers, got {v!r}")
    return v


def check_ranges(section: str, obj) -> None:
    for f in fields(obj):
        bounds = RANGES.get((section, f.name))
        if bounds is None:
            continue
        lo, hi, lo_in, hi_in = bounds
        v = getattr(obj, f.name)
        bad = (lo is not None and (v < lo if lo_in else v <= lo)) or (hi is not None and (v > hi if hi_in else v >= hi))
        if bad:
            lo_s = "" if lo is None else ("[" if lo_in else "(") + f"{lo}"
            hi_s = "inf)" if hi is None else f"{hi}" + ("]" if hi_in else ")")
            lo_s = lo_s or "(-inf"
            raise ConfigError(f"{section}.{f.name}: {v!r} is out of range {lo_s}, {hi_s}")


def _build(klass, d, section):
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{section}: expected a mapping of settings, got {d!r}")
    names = {f.name for f in fields(klass)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in {section}: {sorted(unknown)}")
    types = {f.name: str(f.type) for f in fields(klass)}
    out = {k: _typed(section, k, types[k], v) for k, v in d.items()}
    obj = klass(**out)
    check_ranges(section, obj)
    return obj


def apply_override(d: Dict[str, Any], item: str) -> None:
    """`section.key=value` (value parsed as YAML) into a nested dict."""
    import yaml

    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"override {item!r}: expected section.key=value, e.g. model.num_blocks=2")
    key, value = item.split("=", 1)
    section, name = key.split(".", 1)
    d.setdefault(section, {})[name] = yaml.safe_load(value)
