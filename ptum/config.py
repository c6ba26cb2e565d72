"""One typed configuration for the PTUM model and its training, loadable from YAML and
overridable from the command line; saved beside every model it produced.

Each setting is declared once, here: its type, default, allowed values or range and meaning
(pydantic). Loading checks all of them up front and names the key in a one-line ConfigError;
the model classes take these sections whole (ptum.model.encoder builds from `ModelConfig` and
`ObjectiveConfig` and saves them in its Keras config), so nothing repeats the list elsewhere.
"""
from __future__ import annotations

import json
import os
from typing import Any, ClassVar, Dict, List, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from typing_extensions import Annotated

from ptum.data.transforms import MAX_TIME_BUCKETS


class ConfigError(ValueError):
    pass


def _no_bool(kind: str):
    """YAML's `true` is not a number here (pydantic would read it as 1)."""
    def check(v):
        if isinstance(v, bool):
            raise ValueError(f"expected {kind}, got {v!r}")
        return v
    return BeforeValidator(check)


def _lower_choice(v):
    """`true` / `false` unquoted (YAML booleans) and any case, for string choices."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v.lower() if isinstance(v, str) else v


Int = Annotated[int, _no_bool("an integer")]
Float = Annotated[float, _no_bool("a number"), Field(allow_inf_nan=False)]   # finite only
Bool = Annotated[bool, Field(strict=True)]          # only true / false: "no" is not silently truthy
PositiveInts = List[Annotated[int, _no_bool("an integer"), Field(ge=1, le=8192)]]


class Section(BaseModel):
    """A config section: unknown keys refused; a bad value is a one-line ConfigError naming it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    where: ClassVar[str] = ""    # the section's name in error messages

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise config_error(e, self.where) from None


class ModelConfig(Section):
    """The network. Vocabulary sizes come from the dataset (set at training time)."""

    where: ClassVar[str] = "model"

    embedding_dim: Int = Field(64, ge=1, le=8192)
    num_blocks: Int = Field(2, ge=1, le=64)
    num_heads: Int = Field(2, ge=1, le=256)
    ff_dim: Int = Field(0, ge=0, le=65536, description="0: 4 x embedding_dim")
    dropout: Float = Field(0.2, ge=0.0, lt=1.0)
    max_len: Int = Field(50, ge=1, le=8192)
    attention: Literal["bidirectional", "causal"] = Field(
        "causal", description="bidirectional (PTUM, MBP) | causal (next-item)")
    user_vector: Literal["pooled", "last"] = Field(
        "last", description="pooled (PTUM's attentive pooling) | last (hidden state)")
    use_behavior: Bool = True
    use_time: Bool = Field(True, description="log2 time-gap buckets; switched off for datasets without time")
    time_buckets: Int = Field(32, ge=1, le=MAX_TIME_BUCKETS, description="log2 gap buckets (2^k must fit int64)")
    use_text: Bool = Field(False, description="PTUM-style title encoder (needs the dataset's catalog)")
    text_max_words: Int = Field(16, ge=1, le=1024)
    text_heads: Int = Field(2, ge=1, le=256)
    num_items: Int = Field(0, ge=0, description="filled from the dataset: reserved ids + vocabulary")
    num_behaviors: Int = Field(0, ge=0)
    num_words: Int = Field(0, ge=0)
    future_positions: Int = Field(2, ge=1, le=256, description="NBP's K (one future-position embedding per k)")
    user_embedding: Literal["query", "profile"] = Field(
        "query", description="the exported user embedding: query (the next-item query: readout + "
        "future-position embedding) or profile (the history's item bag through its own item embeddings "
        "+ a projection of the mean hidden state; scored against its own item table + bias; trained by "
        "objective.bag)")
    profile_newest: Bool = Field(False, description="the profile also sees the newest hidden state (recency)")
    architecture: Literal["ptum", "generative"] = Field(
        "ptum", description="ptum (the user encoder, trained by the objectives) | generative (an encoder-decoder "
        "that decodes the next item's code tuple: the generative section; the objective section is not used)")


class ObjectiveConfig(Section):
    where: ClassVar[str] = "objective"
    mbp: Bool = False
    nbp: Bool = True
    nbp_lambda: Float = Field(1.0, ge=0.0, le=1e4)
    mask_rate: Float = Field(0.2, gt=0.0, lt=1.0)
    mbp_readout: Literal["pooled", "position"] = Field(
        "position", description="pooled (PTUM) | position (per masked position)")
    k: Int = Field(1, ge=1, le=256, description="NBP: predict the next K behaviors")
    nbp_from: Literal["last", "every"] = Field(
        "every", description="last (PTUM: from the last position) | every prefix (dense)")
    negatives: Literal["sampled", "shared", "full"] = Field(
        "shared", description="sampled (PTUM's per-target candidates) | shared | full")
    num_negatives: Int = Field(256, ge=1, le=1_000_000)
    logq_correction: Bool = True
    exclude_history: Bool = Field(False, description="NBP: the items a prefix already holds are not negatives "
                                  "of its next item (training agrees with the history-filtered ranking "
                                  "that evaluation and top_k serve)")
    temperature: Float = Field(1.0, gt=0.0, le=1e4)
    loss_average: Literal["batch", "dataset"] = Field(
        "batch", description="NBP from every prefix (and the generative model): batch (each batch's loss is the mean over its targets, so a "
        "batch of short histories gives each of its few targets more weight) | dataset (a batch's summed loss over "
        "its rows x the training data's mean targets per row: every target weighs the same, whatever length "
        "bucket its batch came from)")
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0, description="e > 0: the item softmax's target puts e "
                                   "evenly over the row's candidates (the positive and its negatives); 0: off")
    bag: Bool = Field(False, description="set-level: the profile predicts the user's item bag (full softmax)")
    bag_weight: Float = Field(1.0, ge=0.0, le=1e4)
    bag_dropout: Float = Field(0.5, ge=0.0, lt=1.0, description="share of behaviors hidden from the encoder "
                               "in the bag pass")
    bag_future: Int = Field(0, ge=0, le=8192, description="W > 0: also cut the newest 1..W behaviors off and predict "
                            "them (future window); 0: off")
    bag_contrastive: Float = Field(0.0, ge=0.0, le=1e4, description="c > 0: two dropped views of a history agree "
                                   "(InfoNCE, in-batch negatives); 0: off")
    bag_contrastive_temperature: Float = Field(0.1, gt=0.0, le=1e4)
    bag_target_weight: Literal["uniform", "idf"] = Field(
        "uniform", description="how the user's items weigh in the bag's multinomial target: uniform | idf "
        "(log((1 + N) / (1 + df)) + 1 over the N training rows, as TF-IDF weighs them: a rare item says more "
        "about a user than one everybody has)")


class GenerativeConfig(Section):
    """The generative retrieval model (model.architecture: generative; ptum.model.generative)."""

    where: ClassVar[str] = "generative"
    codes: Literal["semantic", "item_id", "random"] = Field(
        "semantic", description="what the decoder spells an item as: semantic (its Semantic IDs: "
        "generative.semantic_ids) | item_id (the item token, one step: P5's sequential indexing) | random "
        "(random tuples of random_levels x random_codes + a collision token: TIGER's ablation)")
    semantic_ids: str = Field("", description="a `ptum semantic-ids` artifact of this dataset (codes: semantic)")
    random_levels: Int = Field(3, ge=1, le=16)
    random_codes: Int = Field(256, ge=2, le=1 << 16)
    decoder_blocks: Int = Field(2, ge=1, le=64)
    beam_size: Int = Field(20, ge=1, le=4096, description="beams kept at each decoding step (validation, "
                           "evaluation); the metrics' largest cut-off is at most this")
    catalog_items: Bool = Field(False, description="codes: semantic: the catalog's items without events "
                                "(coded from their content by ptum semantic-ids) are in the trie, so the "
                                "model can return them from their first day (cold start)")
    catalog_items_epsilon: Float = Field(0.1, ge=0.0, le=1.0, description="with catalog_items: a top-k "
                                         "holds at most max(1, floor(epsilon * k)) of them (TIGER's epsilon)")
    catalog_items_prefix: Int = Field(-1, ge=-1, le=64, description="with catalog_items: a catalog item joins a "
                                      "list just below a decoded item whose first n codes it shares (TIGER's "
                                      "cold-start retrieval); -1: every level but the collision token; 0: "
                                      "off (only what the beam reaches)")


class TrainConfig(Section):
    where: ClassVar[str] = "train"
    batch_size: Int = Field(128, ge=1, le=1 << 20)
    epochs: Int = Field(50, ge=1, le=1_000_000)
    learning_rate: Float = Field(1e-3, gt=0.0)
    weight_decay: Float = Field(0.0, ge=0.0, le=10.0)
    clipnorm: Float = Field(1.0, ge=0.0, le=1e6)
    patience: Int = Field(5, ge=1, le=1_000_000)
    lr_decay_patience: Int = Field(0, ge=0, le=1_000_000, description="n > 0: the learning rate is multiplied by "
                                   "lr_decay_factor after every n validated epochs without a better one; 0: off")
    lr_decay_factor: Float = Field(0.5, gt=0.0, lt=1.0)
    lr_restarts: Int = Field(0, ge=0, le=1000, description="n > 0: where train.patience would stop, reload the best "
                             "weights, multiply the learning rate by lr_decay_factor and go on, up to n times")
    ema_momentum: Float = Field(0.0, ge=0.0, lt=1.0, description="m > 0: validate, keep and export the moving "
                                "average of the weights (each step: avg = m avg + (1 - m) w); training goes on "
                                "from its own weights; 0: off")
    seed: Int = 0
    length_buckets: PositiveInts = Field(default_factory=lambda: [8, 16, 32])
    eval_every: Int = Field(1, ge=1, le=1_000_000)
    eval_batch_size: Int = Field(512, ge=1, le=1 << 20)
    checkpoint_every_steps: Int = Field(0, ge=0, description="0: at the end of every epoch only")
    mixed_precision: Literal["none", "bf16", "fp16"] = "none"
    jit_compile: Annotated[Literal["auto", "true", "false"], BeforeValidator(_lower_choice)] = Field(
        "auto", description="auto (on accelerators) | true | false")
    steps_per_execution: Int = Field(1, ge=1, le=1_000_000)
    max_train_seconds: Float = Field(0.0, ge=0.0, description="0: no limit")
    deterministic: Bool = Field(False, description="TF op determinism (exact resume; slower)")
    select_metric: Literal["auto", "ndcg@10", "window_recall@10"] = Field(
        "auto", description="early stopping / model selection: ndcg@10 (next item on valid), "
        "window_recall@10 (the user embedding retrieves the valid window: needs a `window` split), auto "
        "(window_recall@10 for profile embeddings on window-split data, else ndcg@10)")


def config_error(e: ValidationError, where: str = "") -> ConfigError:
    """A pydantic ValidationError as one line naming the first bad key (`where`: a prefix)."""
    err = e.errors()[0]
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, ConfigError):     # a nested section's own one-line error
        return inner
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
    key = ".".join(x for x in (where, loc) if x)
    if err["type"] == "extra_forbidden":
        return ConfigError(f"{key}: unknown key")
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    value = f" (value {err['input']!r})" if "input" in err and "got" not in msg else ""
    return ConfigError(f"{key}: {msg}{value}{more}")


class PTUMConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    generative: GenerativeConfig = Field(default_factory=GenerativeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def validate(self) -> "PTUMConfig":
        """The rules that tie settings together (each setting's own type and range is checked
        when it is set)."""
        m, o = self.model, self.objective
        heads = (m.embedding_dim % m.num_heads == 0, "embedding_dim must divide by num_heads")
        checks = [
            heads,
            (o.mbp or o.nbp or o.bag, "enable at least one objective (mbp, nbp, bag)"),
            (not o.bag or m.user_embedding == "profile", "objective.bag trains the profile: set model.user_embedding=profile"),
            (o.bag_contrastive == 0 or o.bag_dropout > 0, "objective.bag_contrastive needs bag_dropout > 0 (the views)"),
            (o.bag or o.bag_target_weight == "uniform", "objective.bag_target_weight weighs the bag objective's targets: "
             "set objective.bag=true"),
            (o.k <= m.future_positions, "objective.k must be <= model.future_positions"),
            (not (self.train.lr_decay_patience and self.train.lr_restarts),
             "train.lr_decay_patience and train.lr_restarts are two decay rules: set one"),
            (not (o.nbp and o.nbp_from == "every" and m.attention == "bidirectional"),
             "NBP from every prefix needs causal attention (bidirectional attention sees the future)"),
            (o.loss_average == "batch" or (o.nbp and o.nbp_from == "every"),
             "objective.loss_average=dataset weighs NBP's targets from every prefix: set objective.nbp_from=every"),
        ]
        if m.architecture == "generative":
            g = self.generative
            checks = [
                heads,
                (g.codes != "semantic" or bool(g.semantic_ids), "generative.codes=semantic needs "
                 "generative.semantic_ids (a `ptum semantic-ids` artifact; or pretrain --semantic-ids)"),
                (g.codes == "semantic" or not g.catalog_items, "generative.catalog_items needs "
                 "generative.codes=semantic (only Semantic IDs code an item from its content)"),
            ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "PTUMConfig":
        d = d or {}
        if not isinstance(d, dict):
            raise ConfigError(f"expected a mapping of settings, got {d!r}")
        unknown = set(d) - set(cls.model_fields)
        if unknown:
            raise ConfigError(f"unknown config section(s): {sorted(unknown)}")
        for section, v in d.items():
            if v is not None and not isinstance(v, dict):
                raise ConfigError(f"{section}: expected a mapping of settings, got {v!r}")
        # Each section built on its own, so its error names it (model.dropout: ...).
        return cls(**{name: f.annotation(**(d.get(name) or {})) for name, f in cls.model_fields.items()}).validate()

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


def apply_override(d: Dict[str, Any], item: str) -> None:
    """`section.key=value` (value parsed as YAML) into a nested dict."""
    import yaml

    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"override {item!r}: expected section.key=value, e.g. model.num_blocks=2")
    key, value = item.split("=", 1)
    section, name = key.split(".", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        tag = " (Python object tags are not allowed in configs)" if "python/" in str(e) or "tag" in str(e) else ""
        raise ConfigError(f"override {item!r}: invalid YAML value: {problem}{tag}") from None
    if not isinstance(d.setdefault(section, {}), dict):
        raise ConfigError(f"override {item!r}: {section} is not a section")
    d[section][name] = parsed


class FinetuneConfig(Section):
    """A fine-tuning run; a bad setting is a one-line ConfigError naming it (e.g. mode: frozn
    no longer runs full)."""

    where: ClassVar[str] = "finetune"

    task: Literal["classify", "ctr"] = "classify"
    mode: Literal["full", "frozen"] = "full"
    head: Literal["linear", "mlp"] = Field("linear", description="linear (a logistic regression on the "
                                           "embedding) | mlp")
    standardize: Bool = Field(True, description="scale the embedding by the training users' mean / std")
    head_l2: Float = Field(1.0, ge=0.0, description="L2 on the head, as 1/C of a logistic regression "
                           "(divided by 2 n)")
    hidden: Int = Field(64, ge=1)
    dropout: Float = Field(0.2, ge=0.0, lt=1.0)
    epochs: Int = Field(30, ge=0, description="full mode: epochs of encoder + head after the head phase")
    head_epochs: Int = Field(100, ge=0, description="the head alone on cached embeddings (frozen mode: "
                             "max of the two)")
    batch_size: Int = Field(32, ge=1)
    learning_rate: Float = Field(3e-3, gt=0.0)
    encoder_lr_scale: Float = Field(0.1, ge=0.0)
    class_weight: Literal["balanced", "none"] = "balanced"
    patience: Int = Field(8, ge=1)
    valid_fraction: Float = Field(0.2, ge=0.0, lt=1.0)
    seed: Int = 0
    duplicate_labels: Literal["error", "first", "last", "drop"] = Field(
        "error", description="a user with label rows that disagree: error (name them and stop) | first | "
        "last (that row's label) | drop (the user); identical repeats are counted either way")
