"""Typed configuration tree.

The defaults live here, in dataclasses; YAML files under ``configs/`` hold
overrides only, and ``--set dotted.key=value`` overrides those. Every field
carries a one-line ``help`` (shown by ``python -m coco_tf.config``), and fields
with a closed set of values declare them in ``choices``.

Example:

>>> cfg = load_config(overrides=["train.epochs=3", "model.backbone=sasrec"])
>>> cfg.train.epochs
3

Unknown keys and bad values raise :class:`ConfigError`, whose message names the
dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import typing
from typing import Any, Dict, List, Optional, Sequence

import yaml


class ConfigError(ValueError):
    """A config key is unknown, or its value has the wrong type or is not allowed."""


def _field(default, help: str, choices: Optional[Sequence[Any]] = None, **kw):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


@dataclasses.dataclass
class DataConfig:
    source: str = _field(
        "synthetic",
        "where interactions come from: the built-in synthetic catalog, the text format "
        "(sequences.txt + items.tsv), or raw Amazon 2014 review/meta files",
        choices=("synthetic", "text", "amazon_raw"),
    )
    path: str = _field("", "directory of the dataset files (source=text or amazon_raw)")
    category: str = _field(
        "Beauty", "Amazon category for source=amazon_raw: reads reviews_<category>_5.json.gz and meta_<category>.json.gz"
    )
    k_core: int = _field(5, "source=amazon_raw: keep users and items with at least this many interactions")
    max_len: int = _field(50, "maximum history length fed to the model (most recent items kept)")
    on_bad_line: str = _field(
        "error",
        "a malformed input line: raise an error naming file and line, or skip it and report the count",
        choices=("error", "skip"),
    )
    synthetic_num_users: int = _field(6000, "synthetic catalog: number of users")
    synthetic_num_items: int = _field(1500, "synthetic catalog: number of items")
    synthetic_min_len: int = _field(5, "synthetic catalog: shortest user sequence")
    synthetic_max_len: int = _field(30, "synthetic catalog: longest user sequence")
    synthetic_seed: int = _field(7, "synthetic catalog: generator seed (the catalog is deterministic by seed)")
    bucket_by_length: bool = _field(
        True, "training batches group users of similar history length and are padded to the batch's own length"
    )


@dataclasses.dataclass
class ModelConfig:
    backbone: str = _field(
        "sasrec",
        "sequential recommender backbone (query tower), one file each in coco_tf/backbones/",
        choices=("sasrec", "bert4rec", "fdsa", "s3rec", "pinnerformer"),
    )
    embedding_dim: int = _field(64, "item embedding / hidden size d of the backbone")
    num_blocks: int = _field(2, "transformer blocks in the backbone")
    num_heads: int = _field(1, "attention heads per block")
    ffn_dim: int = _field(0, "feed-forward inner size; 0 means equal to embedding_dim (SASRec's point-wise FFN)")
    dropout: float = _field(0.5, "dropout rate on embeddings, attention and feed-forward")
    item_text: bool = _field(
        False,
        "candidate tower adds the projected frozen-LLM item text vector to the id embedding; items absent from "
        "the training split (cold) are scored by their text alone (builds the LLM item text table, also for base)",
    )
    attributes: List[str] = _field(
        ["category", "brand"],
        "item attribute fields read by fdsa and s3rec (fields the data lacks are skipped; at least one must exist)",
    )
    bert4rec_mask_prob: float = _field(0.2, "bert4rec: probability that a training item is replaced by [MASK] (cloze)")
    pinnerformer_window: int = _field(
        4, "pinnerformer: each position predicts an item among the next this many actions (dense all-action loss)"
    )
    s3rec_pretrain_epochs: int = _field(
        10, "s3rec: self-supervised pre-training epochs (AAP, MIP, MAP, SP) before fine-tuning (0: none)"
    )
    s3rec_mask_prob: float = _field(0.2, "s3rec pre-training: probability that an item is masked (MIP, MAP)")


@dataclasses.dataclass
class LLMConfig:
    preset: str = _field(
        "tiny",
        "decoder shape preset (random weights unless llm.checkpoint or llm.pretrain_epochs; small = 4 layers, "
        "hidden 256, the size worth pretraining on CPU)",
        choices=("tiny", "small", "qwen3_0.6b", "qwen3_1.7b", "qwen3_4b", "qwen3_8b"),
    )
    checkpoint: str = _field(
        "",
        "local decoder directory written by python -m coco_tf.llm.convert or python -m coco_tf.llm.pretrain "
        "(empty: the llm.preset decoder, random or pretrained in-run)",
    )
    item_text_template: str = _field(
        "{title}",
        "the text the decoder reads per item, for the item text table, the word-piece vocabulary and "
        "pretraining; placeholders {title}, {categories} (category paths), {brand}",
    )
    pretrain_epochs: int = _field(
        0,
        "with llm.checkpoint empty: first pretrain the preset decoder this many epochs (causal LM) on the "
        "catalog's item text, cached by content hash in the cache dir (0: off); python -m coco_tf.llm.pretrain "
        "needs it > 0",
    )
    item_text_source: str = _field(
        "read",
        "what the item text table holds per item: read = the decoder's mean hidden state over the item text "
        "(llm.item_text_template); written = over what the decoder writes after the item's title and the "
        "template's separator (at most llm.knowledge_tokens tokens; coco_tf/llm/knowledge.py): what it knows "
        "about the item beyond its title",
        choices=("read", "written"),
    )
    knowledge_tokens: int = _field(
        16,
        "tokens the decoder writes greedily after each title and the template's separator, for "
        "llm.item_text_source=written and the generated category-agreement probe (0: that probe off)",
    )
    pretrain_batch_size: int = _field(64, "decoder pretraining: item texts per step")
    pretrain_learning_rate: float = _field(
        1e-3, "decoder pretraining: Adam peak learning rate (cosine decay to 10%, gradient norm clipped at 1)"
    )
    pretrain_patience: int = _field(
        3,
        "decoder pretraining: stop when the held-out loss has not improved for this many epochs (0: run every "
        "epoch); the written decoder is always the epoch with the lowest held-out loss",
    )
    pretrain_dropout: float = _field(
        0.0, "decoder pretraining: dropout in the decoder while it pretrains (the written config keeps the preset's)"
    )
    pretrain_train_all: bool = _field(
        False,
        "decoder pretraining from llm.checkpoint: train every weight instead of LoRA (q, v; merged when written); "
        "presets always train every weight",
    )
    lora_rank: int = _field(8, "LoRA rank r on the query and value projections")
    lora_alpha: float = _field(16.0, "LoRA scaling alpha (update scaled by alpha / r)")
    lora_dropout: float = _field(0.05, "dropout on the LoRA branch input")
    cache_dir: str = _field(
        "", "where the item text table and the in-run pretrained decoder are cached (empty: <model_dir>/cache)"
    )
    text_table_shuffle: bool = _field(
        False,
        "control run: permute the item text table's rows across items (fixed seed), so that every item "
        "carries another item's text; a gain that survives it is capacity, not knowledge",
    )


@dataclasses.dataclass
class CoCoConfig:
    method: str = _field("base", "base recommender, KAR baseline, or CoCo", choices=("base", "kar", "coco"))
    ablation: str = _field(
        "none",
        "CoCo ablation: fixed structured prompts (soft), no decoupling (dec), no LoRA update (con)",
        choices=("none", "soft", "dec", "con"),
    )
    fusion: str = _field("attention", "alignment fusion (paper Table 7)", choices=("attention", "mlp", "concat"))
    codebook_size: int = _field(64, "K, soft prompts in the VQ codebook")
    num_shared_prompts: int = _field(2, "shared prompts z_share placed before the private ones")
    threshold: float = _field(0.45, "theta, the selection threshold")
    max_prompts: int = _field(32, "m_max, at most this many private prompts per user")
    selection: str = _field(
        "centered",
        "selection rule: cosine: cos(e_u, z) > threshold (every user ended with m_max, docs/results.md §9); "
        "centered: the same after subtracting the codebook's mean (selects the few codewords a user is near); "
        "softmax: the paper's literal softmax over K",
        choices=("cosine", "centered", "softmax"),
    )
    trim_prompt_slots: bool = _field(
        True,
        "training steps cut the prompt slots no user of the batch selected out of the decoder input "
        "(same values, fewer decoder tokens once m drops below m_max)",
    )
    codebook_init: str = _field("llm", "codebook initialisation", choices=("llm", "random"))
    user_position: str = _field(
        "last",
        "which history position the user-level objective L_r (CoCo and KAR) predicts from in a training "
        "step: the newest (last: one fixed pair per user) or one drawn uniformly per user and step "
        "(random: the prefix ending there and its next item, prefix augmentation over epochs; CoCo's "
        "training telemetry then describes the prefixes)",
        choices=("last", "random"),
    )
    zero_init: bool = _field(
        True,
        "the LLM branch's last projection (CoCo's alignment, KAR's fusion) starts at zero, so that at "
        "initialisation the model ranks exactly as its backbone (false: the paper's random init)",
    )
    base_epochs: int = _field(
        -1,
        "kar/coco: a first stage trains the backbone alone (the base objective); -1: until validation "
        "NDCG@10 stalls for coco.base_patience evaluations; n > 0: at most n epochs (still ending on a stall); "
        "either way it ends by train.epochs - coco.branch_epochs (both stages count toward train.epochs); the "
        "LLM branch then joins from the stage's best checkpoint (0: no base stage)",
    )
    branch_epochs: int = _field(
        5,
        "kar/coco with a base stage: epochs of train.epochs kept for the LLM branch (the base stage ends "
        "at train.epochs - branch_epochs at the latest, and at half of train.epochs if that is later)",
    )
    base_patience: int = _field(
        4,
        "kar/coco base stage: evaluations without a better validation NDCG@10 that end it (Beauty plateaus "
        "with ±0.001 noise: 2 ended the stage at epoch 18 of a model still gaining until 25)",
    )
    branch_patience: int = _field(
        4,
        "kar/coco: evaluations without a better validation NDCG@10 that end training once the LLM branch "
        "trains (after the base stage or coco.init_from); 0: train.early_stopping_patience governs the branch "
        "too. The branch peaks within its first 1-4 epochs on Beauty and then declines (docs/results.md §11)",
    )
    init_from: str = _field(
        "",
        "kar/coco: a finished base run's model_dir; its best checkpoint's backbone and item table start "
        "this run (its config must have the same backbone shape), and there is no base stage",
    )
    rec_to_backbone: bool = _field(
        True,
        "kar/coco: the user-level loss L_r (and CoCo's VQ terms) also train the backbone (the paper: end to "
        "end); false: the backbone learns from its own objective only and L_r trains the LLM branch alone",
    )
    branch_penalty: float = _field(
        0.0,
        "kar/coco: weight of the penalty mean ||user vector - h_RS||^2 on what the LLM branch adds to the "
        "backbone's user vector (0: none, the paper's loss)",
    )
    text_score: bool = _field(
        False,
        "kar/coco: the LLM branch also scores candidates in the frozen item text space: the user vector "
        "gains q_u = a * (its newest history items' text rows, pooled) + W * (the branch's output), each "
        "candidate its L2-normalised text row (a and W start at zero; coco_tf/methods/text_space.py). "
        "false: the paper's reading, the branch acts in the id space only",
    )
    text_window: int = _field(3, "coco.text_score: newest history items pooled into the history's text query")
    text_decay: float = _field(
        0.5, "coco.text_score: weight ratio between consecutive pooled history items, in (0, 1] (1: plain mean)")
    text_summary: bool = _field(
        True, "coco.text_score: add W * (CoCo's pooled h_pure, KAR's reasoning vector) to the text query "
        "(false: the history's text rows alone)")
    text_scale_grid: List[float] = _field(
        [1.0],
        "coco.text_score: after training, the text query's learnt scale a is multiplied by each of "
        "these and the value with the best validation NDCG@10 is kept (and saved in best/) before the "
        "test; [1.0]: a as learnt. L_r fits a on pairs the backbone has trained on, where its own "
        "logits are surer than on unseen users, so the learnt a comes out low (docs/results.md §11)",
    )
    usage_weight: float = _field(
        0.1,
        "weight of the codebook usage term: log K minus the entropy of the batch's mean soft assignment "
        "of e_u to the codewords (0: none, the paper's loss); keeps users spread over the codebook",
    )
    usage_temperature: float = _field(0.1, "temperature of the soft assignment softmax(cos(e_u, z) / t) in the usage term")
    alpha: float = _field(
        1.0,
        "weight of L_aux, the backbone's own objective (eq. 11; the paper's 0.2 down-weights the backbone's "
        "dense objective below one user-level pair per user)",
    )
    beta: float = _field(0.15, "weight of L_ortho (eq. 11)")
    gamma: float = _field(0.25, "weight of L_Q (eq. 11)")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = _field(30, "training epochs")
    batch_size: int = _field(128, "users per training batch")
    learning_rate: float = _field(1e-3, "Adam learning rate")
    weight_decay: float = _field(0.0, "decoupled weight decay (AdamW); 0 means plain Adam")
    loss: str = _field(
        "full_softmax",
        "retrieval loss: softmax over all items, or InfoNCE with in-batch negatives (TFRS Retrieval)",
        choices=("full_softmax", "in_batch"),
    )
    temperature: float = _field(1.0, "logits are divided by this temperature")
    seed: int = _field(42, "seed for initialisation, dropout and shuffling")
    early_stopping_patience: int = _field(
        0, "stop when validation NDCG@10 has not improved for this many evaluations (0: never)"
    )
    eval_every: int = _field(1, "validate every this many epochs")
    keep_checkpoints: int = _field(3, "checkpoints kept by the CheckpointManager")
    checkpoint_every_steps: int = _field(
        0,
        "checkpoint also every this many steps within an epoch (both trainers), bounding the work lost when "
        "the process (or, runtime.strategy=ps, a PS or the chief) dies (0: only at epoch ends)",
    )


@dataclasses.dataclass
class EvalConfig:
    ks: List[int] = _field([5, 10, 20], "cut-offs K for Recall@K and NDCG@K")
    batch_size: int = _field(512, "users per evaluation batch")
    exclude_history: bool = _field(False, "rank history items below all others (the target itself is kept)")


@dataclasses.dataclass
class RuntimeConfig:
    strategy: str = _field(
        "local",
        "distribution strategy: one process, or ParameterServerStrategy from TF_CONFIG (the chief runs "
        "coco_tf.train; see launch/run_cluster.sh)",
        choices=("local", "ps"),
    )
    ps_partitioner: str = _field(
        "min_size",
        "runtime.strategy=ps: how variables are split across PS tasks: shards of at least "
        "partitioner_min_shard_bytes (small variables stay whole), or ps_shards shards for every variable",
        choices=("min_size", "fixed"),
    )
    ps_shards: int = _field(
        0, "runtime.strategy=ps: most shards per variable (0: the number of PS tasks)"
    )
    partitioner_min_shard_bytes: int = _field(
        256 << 10, "runtime.strategy=ps, ps_partitioner=min_size: smallest shard in bytes"
    )
    steps_per_execution: int = _field(
        1, "runtime.strategy=ps: train steps per scheduled function (fewer coordinator round trips)"
    )
    model_dir: str = _field("runs/default", "where checkpoints, TensorBoard events, config.yaml and metrics.json go")
    progress: bool = _field(True, "show a progress bar while training")
    threads: int = _field(0, "TensorFlow intra-op threads (0: TensorFlow's default)")
    deterministic: bool = _field(
        False, "runtime.strategy=local: tf.config.experimental.enable_op_determinism(), so that a run "
        "(and a killed-and-resumed run) gives the same numbers every time on CPU; slower on GPU"
    )
    cluster_connect_timeout: float = _field(
        120.0,
        "runtime.strategy=ps: seconds the chief waits for every ps and worker address to accept a TCP "
        "connection before it stops with exit 3 naming the unreachable tasks (0: do not check)",
    )


@dataclasses.dataclass
class ExportConfig:
    top_k: List[int] = _field(
        [10],
        "python -m coco_tf.export: items returned per request; the first k is serving_default, "
        "every k also gets a top_<k> signature",
    )
    jit_compile: bool = _field(
        False,
        "python -m coco_tf.export: compile the model with XLA (2-3x lower CPU latency; TF Serving then needs "
        "--xla_cpu_compilation_enabled=true); requests are right-padded to data.max_len so that each batch size "
        "compiles once",
    )


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    coco: CoCoConfig = dataclasses.field(default_factory=CoCoConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- parsing


def _section_types(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, type_, choices) -> Any:
    """Converts ``value`` (from YAML or a ``--set`` string) to ``type_``; raises ConfigError."""
    origin = typing.get_origin(type_)
    try:
        if origin in (list, List):
            (item_type,) = typing.get_args(type_)
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            if not isinstance(value, (list, tuple)):
                value = [value]
            out = [_coerce(key, v, item_type, None) for v in value]
        elif type_ is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
                out = True
            elif isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
                out = False
            else:
                raise ValueError(value)
        elif type_ is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            out = int(value)
        elif type_ is float:
            if isinstance(value, bool):
                raise ValueError(value)
            out = float(value)
        elif type_ is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            out = "" if value is None else str(value)
        else:  # pragma: no cover - every field above is one of these
            out = value
    except (TypeError, ValueError):
        tname = getattr(type_, "__name__", str(type_))
        raise ConfigError(f"config key '{key}': {value!r} is not a valid {tname}") from None
    if choices is not None and out not in choices:
        raise ConfigError(
            f"config key '{key}': {out!r} is not allowed; allowed values: {', '.join(map(str, choices))}"
        )
    return out


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    sections = [f.name for f in dataclasses.fields(Config)]
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(
            f"unknown config key '{dotted}'; keys are <section>.<name> with section one of: {', '.join(sections)}"
        )
    if dotted in RETIRED_KEYS:
        default, why = RETIRED_KEYS[dotted]
        if _coerce(dotted, value, type(default), None) != default:  # old run directories hold the default: they load
            raise ConfigError(f"config key '{dotted}' was removed ({why}); only its old default {default!r} is accepted")
        return
    section = getattr(cfg, parts[0])
    fields = {f.name: f for f in dataclasses.fields(section)}
    if parts[1] not in fields:
        raise ConfigError(
            f"unknown config key '{dotted}'; keys in '{parts[0]}': {', '.join(sorted(fields))}"
        )
    f = fields[parts[1]]
    type_ = _section_types(type(section))[f.name]
    setattr(section, f.name, _coerce(dotted, value, type_, f.metadata.get("choices")))


# Keys that config.yaml files of older runs still contain: {key: (the only accepted value, why removed)}.
RETIRED_KEYS = {
    "train.mixed_precision": (False, "nothing ever read it"),
}


def apply_dict(cfg: Config, overrides: Dict[str, Any], source: str = "overrides") -> Config:
    """Applies a nested ``{section: {key: value}}`` mapping (a parsed YAML file)."""
    if overrides is None:
        return cfg
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(overrides).__name__}")
    for section, values in overrides.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys to values")
        for key, value in values.items():
            try:
                _set(cfg, f"{section}.{key}", value)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    return cfg


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (``'a.b=value'`` strings)."""
    cfg = Config()
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as fh:
            try:
                data = yaml.safe_load(fh)
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {e}") from None
        apply_dict(cfg, data or {}, source=path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set(cfg, key.strip(), value.strip())
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that a single key's type cannot express."""
    positive = {
        "data.max_len": cfg.data.max_len,
        "model.embedding_dim": cfg.model.embedding_dim,
        "model.num_heads": cfg.model.num_heads,
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "eval.batch_size": cfg.eval.batch_size,
        "train.eval_every": cfg.train.eval_every,
        "train.keep_checkpoints": cfg.train.keep_checkpoints,
        "runtime.steps_per_execution": cfg.runtime.steps_per_execution,
        "runtime.partitioner_min_shard_bytes": cfg.runtime.partitioner_min_shard_bytes,
        "coco.codebook_size": cfg.coco.codebook_size,
        "coco.max_prompts": cfg.coco.max_prompts,
        "coco.base_patience": cfg.coco.base_patience,
        "coco.usage_temperature": cfg.coco.usage_temperature,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {value}")
    if cfg.model.embedding_dim % cfg.model.num_heads:
        raise ConfigError(
            f"config key 'model.num_heads': {cfg.model.num_heads} does not divide "
            f"model.embedding_dim={cfg.model.embedding_dim}"
        )
    for key, value in (("model.bert4rec_mask_prob", cfg.model.bert4rec_mask_prob),
                       ("model.s3rec_mask_prob", cfg.model.s3rec_mask_prob)):
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"config key '{key}': must be in (0, 1], got {value}")
    if cfg.model.pinnerformer_window <= 0:
        raise ConfigError(f"config key 'model.pinnerformer_window': must be > 0, got {cfg.model.pinnerformer_window}")
    if cfg.model.s3rec_pretrain_epochs < 0:
        raise ConfigError(
            f"config key 'model.s3rec_pretrain_epochs': must be >= 0, got {cfg.model.s3rec_pretrain_epochs}"
        )
    if (cfg.runtime.strategy == "ps" and cfg.model.backbone == "s3rec" and cfg.model.s3rec_pretrain_epochs > 0):
        raise ConfigError(
            "config key 'model.s3rec_pretrain_epochs': pre-training runs with runtime.strategy=local only; "
            "set it to 0 (or pre-train locally) for runtime.strategy=ps"
        )
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"config key 'model.dropout': must be in [0, 1), got {cfg.model.dropout}")
    if cfg.train.temperature <= 0:
        raise ConfigError(f"config key 'train.temperature': must be > 0, got {cfg.train.temperature}")
    if not cfg.eval.ks or any(k <= 0 for k in cfg.eval.ks):
        raise ConfigError(f"config key 'eval.ks': a non-empty list of positive integers, got {cfg.eval.ks}")
    if not cfg.export.top_k or any(k <= 0 for k in cfg.export.top_k):
        raise ConfigError(f"config key 'export.top_k': a non-empty list of positive integers, got {cfg.export.top_k}")
    if len(set(cfg.export.top_k)) != len(cfg.export.top_k):
        raise ConfigError(f"config key 'export.top_k': each k at most once, got {cfg.export.top_k}")
    if cfg.data.source in ("text", "amazon_raw") and not cfg.data.path:
        raise ConfigError(f"config key 'data.path': required when data.source={cfg.data.source}")
    for key, value in (("train.checkpoint_every_steps", cfg.train.checkpoint_every_steps),
                       ("runtime.ps_shards", cfg.runtime.ps_shards),
                       ("runtime.cluster_connect_timeout", cfg.runtime.cluster_connect_timeout),
                       ("coco.num_shared_prompts", cfg.coco.num_shared_prompts),
                       ("coco.branch_epochs", cfg.coco.branch_epochs),
                       ("coco.branch_patience", cfg.coco.branch_patience), ("coco.usage_weight", cfg.coco.usage_weight),
                       ("coco.branch_penalty", cfg.coco.branch_penalty)):
        if value < 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {value}")
    if not cfg.coco.text_scale_grid or any(c <= 0 for c in cfg.coco.text_scale_grid):
        raise ConfigError(f"config key 'coco.text_scale_grid': a non-empty list of positive floats, got "
                          f"{cfg.coco.text_scale_grid}")
    if cfg.coco.text_window < 1:
        raise ConfigError(f"config key 'coco.text_window': must be >= 1, got {cfg.coco.text_window}")
    if not 0.0 < cfg.coco.text_decay <= 1.0:
        raise ConfigError(f"config key 'coco.text_decay': must be in (0, 1], got {cfg.coco.text_decay}")
    if cfg.coco.base_epochs < -1:
        raise ConfigError(f"config key 'coco.base_epochs': must be -1 (until validation stalls), 0 (no base "
                          f"stage) or a positive limit, got {cfg.coco.base_epochs}")
    from coco_tf.llm.item_text import template_fields

    try:
        template_fields(cfg.llm.item_text_template)
    except ValueError as e:
        raise ConfigError(f"config key 'llm.item_text_template': {e}") from None
    if cfg.llm.pretrain_epochs < 0:
        raise ConfigError(f"config key 'llm.pretrain_epochs': must be >= 0, got {cfg.llm.pretrain_epochs}")
    if cfg.llm.knowledge_tokens < 0:
        raise ConfigError(f"config key 'llm.knowledge_tokens': must be >= 0, got {cfg.llm.knowledge_tokens}")
    if cfg.llm.item_text_source == "written" and cfg.llm.knowledge_tokens == 0:
        raise ConfigError("config key 'llm.knowledge_tokens': must be > 0 with llm.item_text_source=written "
                          "(the decoder writes that many tokens per item)")
    if cfg.llm.pretrain_patience < 0:
        raise ConfigError(f"config key 'llm.pretrain_patience': must be >= 0, got {cfg.llm.pretrain_patience}")
    if not 0.0 <= cfg.llm.pretrain_dropout < 1.0:
        raise ConfigError(f"config key 'llm.pretrain_dropout': must be in [0, 1), got {cfg.llm.pretrain_dropout}")
    if cfg.llm.pretrain_batch_size <= 0:
        raise ConfigError(f"config key 'llm.pretrain_batch_size': must be > 0, got {cfg.llm.pretrain_batch_size}")
    if cfg.llm.pretrain_learning_rate <= 0:
        raise ConfigError(
            f"config key 'llm.pretrain_learning_rate': must be > 0, got {cfg.llm.pretrain_learning_rate}"
        )
    if cfg.data.source == "synthetic" and cfg.data.synthetic_min_len < 3:
        raise ConfigError("config key 'data.synthetic_min_len': must be >= 3 (train, validation and test items)")


def dump_config(cfg: Config, path: str) -> None:
    """Writes the resolved config as YAML, one comment line per key."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(to_yaml(cfg))


def to_yaml(cfg: Config, comments: bool = True) -> str:
    out = io.StringIO()
    for section_field in dataclasses.fields(cfg):
        section = getattr(cfg, section_field.name)
        out.write(f"{section_field.name}:\n")
        hints = _section_types(type(section))
        for f in dataclasses.fields(section):
            if comments:
                out.write(f"  # {_type_name(hints[f.name], f)}: {f.metadata['help']}\n")
            value = yaml.safe_dump(getattr(section, f.name), default_flow_style=True).strip()
            if value.endswith("\n..."):
                value = value[: -len("\n...")]
            value = value.replace("\n...", "")
            out.write(f"  {f.name}: {value}\n")
    return out.getvalue()


def _type_name(type_, f) -> str:
    if f.metadata.get("choices"):
        return " | ".join(map(str, f.metadata["choices"]))
    if typing.get_origin(type_) in (list, List):
        return f"list[{typing.get_args(type_)[0].__name__}]"
    return type_.__name__


def reference_markdown() -> str:
    """The config reference table (README's 'Config reference' section)."""
    cfg = Config()
    lines = ["| key | type / allowed | default | meaning |", "|---|---|---|---|"]
    for section_field in dataclasses.fields(cfg):
        section = getattr(cfg, section_field.name)
        hints = _section_types(type(section))
        for f in dataclasses.fields(section):
            tname = _type_name(hints[f.name], f).replace("|", "\\|")
            default = getattr(section, f.name)
            lines.append(
                f"| `{section_field.name}.{f.name}` | {tname} | `{default!r}` | {f.metadata['help']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m coco_tf.config: print the reference
    print(reference_markdown())
