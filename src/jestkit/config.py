"""Typed run configs, named presets and `key=value` overrides (big_vision style, without the magic).

A run is described by one :class:`RunConfig`: a tree of small dataclasses. Presets are functions
that return a complete config; the command line picks one and applies overrides such as
``selection.filter_ratio=0.9 train.steps=2000``. Every override is type-checked against the field
it sets, so a typo or a wrong type fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jestkit.errors import JestkitError, check
from jestkit.selection import SELECTORS, super_batch_size

SELECTION_METHODS = tuple(SELECTORS)
CRITERIA = ("learnability", "hard_learner", "easy_reference")
SCORERS = ("learner", "proxy")


@dataclass
class DataConfig:
    """Where the training examples come from."""

    dataset: str = "fashion-scenes"  # an embedded dataset, prepared on demand in the cache folder
    dir: str = ""  # a prepared dataset folder (from `jestkit prepare` / `make-shards`); wins over `dataset`
    recipe: str = "web-noise"
    data_seed: int = 0  # seed of `prepare` (the data), distinct from the training seed
    pool_size: int = 60000
    hard_negative_density: float = -1.0  # < 0: the recipe's default
    hard_negative_group_size: int = 0  # 0: prepare's default (2); see `jestkit prepare --help`
    hard_negative_edits: str = "attribute"  # or "layout": groups of dozens of variants
    curated_fraction: float = -1.0  # < 0: prepare's default (0.08 of the pool)
    noise: dict[str, float] = field(default_factory=dict)  # per-kind rates over the recipe's
    train_split: str = "pool"
    eval_dir: str = ""  # with data.dir = img2dataset shards: the eval shards (folder or pattern)
    resize: str = "crop"  # how img2dataset images meet the model's input: crop | stretch | pad
    in_memory: bool = True  # decode the split once; the fast path for datasets that fit in RAM
    num_workers: int = 0


@dataclass
class ModelSpec:
    """A registered model and the fields we override on it (see `jestkit.models.list_models()`)."""

    name: str = "mlp-tiny-56"
    vocab_size: int = 512  # size of the BPE vocabulary trained on the training captions
    context_length: int = 32
    overrides: dict[str, Any] = field(default_factory=dict)  # any other ModelConfig field


@dataclass
class SelectionConfig:
    """How the b training examples are chosen from each super-batch of N = b / (1 - f)."""

    method: str = "jest"  # uniform | independent | jest | flexi-jest
    filter_ratio: float = 0.8
    criterion: str = "learnability"  # learnability | hard_learner | easy_reference
    n_chunks: int = 16
    temperature: float = 1.0
    # lambda on JEST's joint terms: 1 is the paper's algorithm; N_paper / N emulates the weight
    # they carry in the paper's super-batch (an analysis; docs/reproduction.md, "Arms").
    joint_weight: float = 1.0
    independent_method: str = "softmax"  # softmax | topk
    score_mode: str = "diagonal"  # independent per-example score: diagonal | rowcol
    score_batch_size: int = 256  # embed the super-batch in chunks of this many (0: at once)
    score_patch_size: int = 0  # 0: full resolution; flexi-jest defaults to the largest patch size
    # Log `sel/*` diagnostics every step (a k x k block of pair scores: turn off at b ~ 32k).
    stats: bool = True
    # Cheaper learner-side scoring (jestkit.sources): "learner" (the learner itself; with
    # score_refresh=k > 1 a copy refreshed every k steps, its embeddings cached by uid) or
    # "proxy" (a small dual encoder trained online on the selected batches).
    scorer: str = "learner"
    score_refresh: int = 1
    proxy_model: str = "mlp-tiny-56"  # a registered model; image size/vocab follow the learner's
    proxy_overrides: dict[str, Any] = field(
        default_factory=lambda: {"image_width": 64, "text_width": 32, "embed_dim": 32}
    )
    proxy_lr: float = 0.0  # 0: optim.lr
    # Reference model folder; "" = train one on `reference_split` (embedded data only).
    reference: str = ""
    # Reference cache folder; "" = build/reuse one automatically; "online" = run it every step.
    reference_cache: str = ""
    reference_split: str = "curated"  # what an automatically trained reference learns from
    reference_steps: int = 600  # that reference run's length (uniform, batch = train.batch_size)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 256
    seed: int = 0
    multires_fraction: float = 0.0  # share of each batch trained at the low-resolution patch size
    eval_every: int = 100
    eval_max_examples: int = 0  # 0: the whole eval split
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast; CUDA only)
    tensorboard: bool = False
    nonfinite: str = "stop"  # stop | skip: what a non-finite loss or score does
    progress: bool = True


@dataclass
class RunConfig:
    name: str = "custom"
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        cfg = cls()
        for section, values in d.items():
            if section == "name":
                cfg.name = values
                continue
            check(hasattr(cfg, section), f"config: unknown section {section!r}")
            setattr(cfg, section, _dataclass_from_dict(type(getattr(cfg, section)), values))
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def super_batch_size(self) -> int:
        """N, the examples drawn per step: b / (1 - f), or b when nothing is selected."""
        if self.selection.method == "uniform":
            return self.train.batch_size
        return super_batch_size(self.train.batch_size, self.selection.filter_ratio)


# Keys of the config that may change on resume without changing the run (everything else must match).
RESUMABLE_KEYS = {
    ("train", "steps"),
    ("train", "progress"),
    ("train", "tensorboard"),
    ("train", "eval_every"),
    ("train", "checkpoint_every"),
    ("train", "keep_checkpoints"),
    ("train", "device"),
    ("data", "num_workers"),
    ("selection", "stats"),
}


def config_diff(
    saved: dict[str, Any], current: dict[str, Any], same: Callable[..., bool] | None = None
) -> list[tuple[str, Any, Any, bool]]:
    """``(section.key, saved value, current value, saved lacks the key)`` for every key that
    changed since `saved` (a checkpoint's or a run folder's config), keys that may change on
    resume aside. A key `saved` predates counts as its default (a checkpoint from an older jestkit
    resumes if the new option is left alone); `same(key, old, new)` may declare values equal."""
    defaults = RunConfig().to_dict()
    diffs = []
    for section, values in current.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if (section, key) in RESUMABLE_KEYS:
                continue
            missing = key not in saved.get(section, {})
            old = saved.get(section, {}).get(key, defaults.get(section, {}).get(key))
            if old != value and not (same and same((section, key), old, value)):
                diffs.append((f"{section}.{key}", old, value, missing))
    return diffs


def config_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why a checkpoint written with `saved` cannot resume as `current` (empty: it can)."""
    return [
        f"{k}: checkpoint {old!r}, now {new!r}" for k, old, new, _ in config_diff(saved, current)
    ]


def _dataclass_from_dict(kind: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - names)
    check(
        not unknown, f"config: unknown keys {unknown} for {kind.__name__}; known: {sorted(names)}"
    )
    return kind(**values)


# ----------------------------------------------------------------------------------------------
# Presets

PRESETS: dict[str, Callable[[], RunConfig]] = {}


def preset(fn: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
    PRESETS[fn.__name__.replace("_", "-")] = fn
    return fn


def list_presets() -> list[str]:
    return sorted(PRESETS)


@preset
def quick() -> RunConfig:
    """A few hundred steps of JEST on the embedded compositional scenes: the smoke test."""
    cfg = RunConfig(name="quick")
    cfg.train.steps = 300
    cfg.train.eval_every = 100
    cfg.train.checkpoint_every = 100
    cfg.train.eval_max_examples = 1000
    cfg.data.pool_size = 20000
    return cfg


@preset
def reference() -> RunConfig:
    """The reference model: plain (uniform) training on the small curated split."""
    cfg = RunConfig(name="reference")
    cfg.data.train_split = "curated"
    cfg.selection.method = "uniform"
    cfg.train.steps = 600
    cfg.train.eval_every = 200
    cfg.train.checkpoint_every = 200
    return cfg


@preset
def scenes() -> RunConfig:
    """The reproduction's learner run on fashion-scenes (the default method: jest at f = 0.8)."""
    cfg = RunConfig(name="scenes")
    cfg.train.steps = 1500
    cfg.train.eval_every = 100
    cfg.train.checkpoint_every = 500
    return cfg


@preset
def debug() -> RunConfig:
    """Seconds on a laptop: sklearn digits, tiny batches. For tests and for trying flags."""
    cfg = RunConfig(name="debug")
    cfg.data.dataset = "digits"
    cfg.data.pool_size = 1200
    cfg.model.name = "mlp-tiny-28"
    cfg.model.vocab_size = 128
    cfg.model.context_length = 16
    cfg.train.steps = 40
    cfg.train.batch_size = 32
    cfg.train.eval_every = 20
    cfg.train.checkpoint_every = 20
    cfg.train.progress = False
    cfg.selection.n_chunks = 4
    cfg.selection.reference_steps = 40
    cfg.optim.warmup_steps = 5
    return cfg


@preset
def paper_b16() -> RunConfig:
    """The paper's setting for a GPU cluster: ViT-B/16, b = 32768, f = 0.8, flexi-jest.

    Needs your own shards (`data.dir=...`) and a reference (`selection.reference=...`).
    """
    cfg = RunConfig(name="paper-b16")
    cfg.data.dataset = ""
    cfg.data.in_memory = False
    cfg.data.num_workers = 8
    cfg.model.name = "vit-b16"
    cfg.model.vocab_size = 32000
    cfg.model.context_length = 64
    cfg.train.steps = 100_000
    cfg.train.batch_size = 32768
    cfg.train.multires_fraction = 0.5
    cfg.train.precision = "bf16"
    cfg.train.eval_every = 5000
    cfg.train.checkpoint_every = 1000
    cfg.selection.method = "flexi-jest"
    cfg.selection.stats = False  # the k x k diagnostics: ~3 TFLOP per step at this b
    cfg.optim.lr = 1e-3
    cfg.optim.warmup_steps = 10_000
    return cfg


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise JestkitError(f"--config: unknown preset {name!r}; known presets: {list_presets()}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------------------------
# Overrides


def apply_overrides(cfg: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """Apply ``section.key=value`` strings in order; values are parsed by the field's type.

    ``model.<field>=v`` for a field that is not on :class:`ModelSpec` goes to
    ``model.overrides`` (checked against the model registry when the model is built).
    """
    for item in overrides:
        check("=" in item, f"override {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        path = key.strip().split(".")
        if path == ["name"]:
            cfg.name = raw
            continue
        check(
            len(path) == 2, f"override {item!r}: expected section.key=value, e.g. train.steps=500"
        )
        section, name = path
        sections = [f.name for f in dataclasses.fields(cfg) if f.name != "name"]
        check(
            section in sections,
            f"override {item!r}: unknown section {section!r}; known: {sections}",
        )
        obj = getattr(cfg, section)
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if name not in fields:
            if section == "model":
                obj.overrides[name] = _parse_loose(raw)
                continue
            raise JestkitError(
                f"override {item!r}: unknown key {name!r} in {section}; known: {sorted(fields)}"
            )
        hint = typing.get_type_hints(type(obj))[name]
        setattr(obj, name, _parse_typed(raw, hint, item))
    return cfg


def _parse_typed(raw: str, hint: Any, item: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _parse_typed(
            raw, next(a for a in typing.get_args(hint) if a is not type(None)), item
        )
    try:
        if hint is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
        return json.loads(raw)
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        raise JestkitError(f"override {item!r}: value {raw!r} is not a valid {name}") from None


def _parse_loose(raw: str) -> Any:
    """A model override value: JSON when it parses (numbers, lists, bools), else a string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# ----------------------------------------------------------------------------------------------
# Validation


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value that would otherwise fail deep inside a run; messages name key and value."""
    t, s, o = cfg.train, cfg.selection, cfg.optim
    check(t.steps > 0, f"train.steps must be > 0, got {t.steps}")
    check(t.batch_size > 0, f"train.batch_size must be > 0, got {t.batch_size}")
    check(
        0.0 <= t.multires_fraction <= 1.0,
        f"train.multires_fraction must be in [0, 1], got {t.multires_fraction}",
    )
    check(t.eval_every >= 0, f"train.eval_every must be >= 0, got {t.eval_every}")
    check(t.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {t.checkpoint_every}")
    check(t.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}")
    check(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    check(
        t.precision in ("fp32", "bf16"),
        f"train.precision must be fp32 or bf16, got {t.precision!r}",
    )
    check(
        t.nonfinite in ("stop", "skip"),
        f"train.nonfinite must be stop or skip, got {t.nonfinite!r}",
    )
    check(
        s.method in SELECTION_METHODS,
        f"selection.method: unknown {s.method!r}; known: {list(SELECTION_METHODS)}",
    )
    criterion = s.criterion.replace("-", "_")
    check(
        criterion in CRITERIA,
        f"selection.criterion: unknown {s.criterion!r}; known: {list(CRITERIA)}",
    )
    s.criterion = criterion
    check(
        0.0 < s.filter_ratio < 1.0,
        f"selection.filter_ratio must be in (0, 1), got {s.filter_ratio}",
    )
    check(s.n_chunks >= 1, f"selection.n_chunks must be >= 1, got {s.n_chunks}")
    if s.method in ("jest", "flexi-jest"):
        check(
            t.batch_size % s.n_chunks == 0,
            f"train.batch_size={t.batch_size} is not divisible by selection.n_chunks={s.n_chunks}",
        )
    check(s.temperature >= 0.0, f"selection.temperature must be >= 0, got {s.temperature}")
    check(
        math.isfinite(s.joint_weight) and s.joint_weight >= 0.0,
        f"selection.joint_weight must be a finite number >= 0, got {s.joint_weight}",
    )
    check(
        s.independent_method in ("softmax", "topk"),
        f"selection.independent_method must be softmax or topk, got {s.independent_method!r}",
    )
    check(
        s.score_mode in ("diagonal", "rowcol"),
        f"selection.score_mode must be diagonal or rowcol, got {s.score_mode!r}",
    )
    check(
        s.score_patch_size >= 0,
        f"selection.score_patch_size must be >= 0, got {s.score_patch_size}",
    )
    check(
        s.reference_steps >= 1, f"selection.reference_steps must be >= 1, got {s.reference_steps}"
    )
    check(
        s.scorer in SCORERS,
        f"selection.scorer: unknown {s.scorer!r}; known: {list(SCORERS)}",
    )
    check(s.score_refresh >= 1, f"selection.score_refresh must be >= 1, got {s.score_refresh}")
    check(
        s.scorer == "learner" or s.score_refresh == 1,
        f"selection.score_refresh={s.score_refresh} refreshes a learner snapshot; it cannot be "
        f"combined with selection.scorer={s.scorer!r}",
    )
    check(s.proxy_lr >= 0, f"selection.proxy_lr must be >= 0, got {s.proxy_lr}")
    if s.scorer == "proxy":
        from jestkit.models import list_models

        check(
            s.proxy_model in list_models(),
            f"selection.proxy_model: unknown model {s.proxy_model!r}; known: {list_models()}",
        )
        check(
            isinstance(s.proxy_overrides, dict),
            f"selection.proxy_overrides must be a JSON object, got {s.proxy_overrides!r}",
        )
    check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    check(
        0.0 <= o.beta1 < 1.0 and 0.0 <= o.beta2 < 1.0,
        f"optim.beta1/beta2 must be in [0, 1), got {o.beta1}, {o.beta2}",
    )
    check(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    check(o.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {o.grad_clip}")
    check(cfg.model.vocab_size >= 16, f"model.vocab_size must be >= 16, got {cfg.model.vocab_size}")
    check(
        cfg.model.context_length >= 2,
        f"model.context_length must be >= 2, got {cfg.model.context_length}",
    )
    check(
        bool(cfg.data.dir) or bool(cfg.data.dataset),
        "data: set data.dir (a prepared dataset folder) or data.dataset (an embedded dataset)",
    )
    check(
        cfg.data.resize in ("crop", "stretch", "pad"),
        f"data.resize must be crop, stretch or pad, got {cfg.data.resize!r}",
    )
    return cfg


def load_config(preset_name: str, overrides: Iterable[str] = ()) -> RunConfig:
    """The preset with the overrides applied, validated."""
    return validate(apply_overrides(get_preset(preset_name), overrides))
