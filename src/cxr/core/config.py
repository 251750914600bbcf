"""params.yaml, parsed once into typed, validated dataclasses.

Every stage parses the whole file, and the pipeline's first stage (`params`, see dvc.yaml) does
nothing else, so a wrong value anywhere fails before any stage works or DVC removes an output,
with an error that names the key. Unknown keys are errors, and so are missing ones: a typo or a
deleted line must not silently fall back to a code default. The defaults in the dataclasses
below are what a missing-key error tells the user to copy into params.yaml; which keys are
required follows from the dataclasses alone (`missing_keys`), so a new key needs only its field
here and its line in params.yaml.

Names of things (a model, an optimizer, an augment operation, ...) are checked against the
registries of the phases that define them (`cxr.core.registry`), handed to `parse_params` by
the caller: this module imports no phase. The `params` stage hands every registry (`cxr.names`),
each other stage those of the names it uses.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from cxr.core.errors import CxrError
from cxr.core.registry import Registry
from cxr.core.urls import ENV_PASSWORD, ENV_TOKEN, ENV_USER, redact, url_secret

# Unknown keys are errors; inf and nan are never a valid number of anything (`lr: .inf`).
_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ParamsError(CxrError, ValueError):
    """A params.yaml value is missing, unknown or out of range; the message names the key."""


def _registry(info: ValidationInfo, kind: str) -> Registry | None:
    """The registry of `kind` that the caller of `parse_params` handed over, if any."""
    return ((info.context or {}).get("registries") or {}).get(kind)


def registered(kind: str) -> AfterValidator:
    """A str field whose value must be a name in the registry of `kind` (when handed over)."""

    def check(value: str, info: ValidationInfo) -> str:
        registry = _registry(info, kind)
        if registry is not None:
            registry.check(value)
        return value

    return AfterValidator(check)


@dataclass(config=_STRICT)
class SyntheticConfig:
    """The embedded sample: deterministic chest-X-ray-like phantoms (smoke runs only)."""

    n_images: StrictInt = Field(600, ge=40, le=1_000_000)
    image_size: StrictInt = Field(128, ge=64, le=1024)
    seed: StrictInt = 0


@dataclass(config=_STRICT)
class ArchiveConfig:
    """How archives (URL, Kaggle, local zip/tar) are fetched and unpacked."""

    sha256: str = ""  # expected sha256 of an http(s) archive; required for URL sources
    retries: StrictInt = Field(3, ge=0)  # extra tries after a transient HTTP/network failure
    timeout_s: float = Field(60.0, gt=0)
    max_files: StrictInt = Field(100_000, ge=1)  # zip-bomb caps, checked before extracting
    max_mb: StrictInt = Field(
        4096, ge=1
    )  # also caps a download (Content-Length and bytes received)
    # Largest uncompressed/compressed size ratio of a zip member (of a whole tar.gz); images
    # barely compress, a zip bomb of zeros reaches 1000:1.
    max_ratio: StrictInt = Field(100, ge=1)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if value and (len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value)):
            raise ValueError("must be the archive's 64-hex-digit sha256, or empty")
        return value.lower()


@dataclass(config=_STRICT)
class DataConfig:
    # `synthetic`, a folder (class sub-folders of images, or the Kaggle database's
    # `<Class>/images` + `<Class>/masks` layout), a .zip/.tar.gz archive, an http(s) URL of
    # one, or `kaggle:<owner>/<dataset>`. Relative paths are taken from the project root.
    source: str = "synthetic"
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
    on_bad_image: Literal["fail", "skip"] = "fail"
    # Images narrower or lower than this many pixels are bad images (see on_bad_image).
    min_side: StrictInt = Field(32, ge=1)
    class_aliases: dict[str, str] = Field(default_factory=dict)  # folder name -> class name
    # A CSV at the source's root with one row per image (its `file` column: the image's path
    # in the source, e.g. COVID/images/x.png) and any other columns, such as the patient; read
    # when the source has it and copied to data/metadata.csv for split.group_by.
    metadata: str = "manifest.csv"
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be 'synthetic' or a folder path")
        return value

    @field_validator("source")
    @classmethod
    def _no_secret_in_url(cls, value: str) -> str:
        # Params are stored verbatim (dvc.lock, DVC's run-cache, MLflow): refuse, don't store.
        secret = url_secret(value) if "://" in value else None
        if secret:
            raise ValueError(
                f"the URL carries {secret}, which DVC would store in dvc.lock and MLflow in the "
                "run's params. Remove it from the URL and give the credentials in ~/.netrc "
                f"(machine HOST login USER password PASSWORD), or in {ENV_USER} + "
                f"{ENV_PASSWORD}, or a bearer token in {ENV_TOKEN}"
            )
        return value

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [ext for ext in value if not ext.startswith(".")]
        if bad:
            raise ValueError(f"extensions must start with '.', got {bad}")
        return tuple(ext.lower() for ext in value)


@dataclass(config=_STRICT)
class SplitConfig:
    mode: Literal["ratio", "fixed"] = "ratio"
    ratio: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test
    fixed: tuple[int, int] = (60, 60)  # val and test images per class; the rest is train
    seed: StrictInt = 1337
    # Perceptual-hash bits (of 256) within which two images are near-duplicates; None: off.
    near_duplicate_distance: StrictInt | None = Field(24, ge=0, le=128)
    # A column of the source's metadata CSV (data.metadata) whose images must share a split,
    # e.g. the patient: one person's images in train and test would leak. "" splits by image.
    group_by: str = "patient"

    @field_validator("ratio")
    @classmethod
    def _ratio_sums_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(part <= 0 for part in value):
            raise ValueError(f"every share must be > 0, got {list(value)}")
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"train, val and test shares must sum to 1, got {sum(value):g}")
        return value

    @field_validator("fixed")
    @classmethod
    def _fixed_positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(count < 1 for count in value):
            raise ValueError(f"val and test counts must be >= 1, got {list(value)}")
        return value


@dataclass(config=_STRICT)
class AugmentOp:
    """One Augmentor Pipeline operation: its method name and keyword arguments."""

    name: Annotated[str, registered("augment operation")]
    probability: float = Field(ge=0.0, le=1.0)
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _arguments_accepted(self, info: ValidationInfo) -> AugmentOp:
        registry = _registry(info, "augment operation")
        if registry is not None:  # the operation's own check of its probability and arguments
            registry[self.name].check(self.probability, self.args)
        return self


@dataclass(config=_STRICT)
class AugmentConfig:
    # Minority classes are oversampled up to: `majority` (the largest class), an integer
    # count, or a float times the largest class (0.5: half of it; 3.0: every class, the largest
    # too, grows to three times its size with augmented copies); `none` oversamples nothing
    # (imbalance is then left to train.imbalance). Classes above the target are kept whole.
    target: Literal["majority", "none"] | StrictInt | float = "majority"
    seed: StrictInt = 42
    operations: tuple[AugmentOp, ...] = ()

    @field_validator("target")
    @classmethod
    def _positive_target(cls, value: str | int | float) -> str | int | float:
        if isinstance(value, int) and value < 1:
            raise ValueError("an integer target must be >= 1")
        if isinstance(value, float) and not 0 < value <= 100:
            raise ValueError("a float target (times the largest class) must be in (0, 100]")
        return value


@dataclass(config=_STRICT)
class BatchAugmentConfig:
    """Random jitter applied to every training batch on the training device."""

    enabled: StrictBool = True
    rotation_deg: float = Field(7.0, ge=0.0, le=180.0)  # up to ± this many degrees
    shift: float = Field(0.05, ge=0.0, lt=0.5)  # up to ± this fraction of the side
    scale: tuple[float, float] = (0.92, 1.08)  # zoom factor range
    intensity: float = Field(0.1, ge=0.0, lt=1.0)  # brightness and contrast, ± fraction

    @field_validator("scale")
    @classmethod
    def _ordered_positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"must be [min, max] with 0 < min <= max, got {list(value)}")
        return value


@dataclass(config=_STRICT)
class TrainConfig:
    model: Annotated[str, registered("model")] = "efficientnet_lite0"
    # `none` (from scratch), `DEFAULT` or a torchvision weights name (`IMAGENET1K_V1`, ...), or a
    # local .pth/.pt/.safetensors file (see cxr.training.models).
    weights: str = "DEFAULT"
    image_size: StrictInt = Field(64, ge=32, le=1024)
    epochs: StrictInt = Field(4, ge=1, le=10_000)
    batch_size: StrictInt = Field(
        32, le=65_536
    )  # >= 2: BatchNorm cannot train on one image (see _trainable_batch)
    optimizer: Annotated[str, registered("optimizer")] = "adamw"
    weight_decay: float = Field(0.01, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    scheduler: Annotated[str, registered("scheduler")] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0)  # cosine: linear warm-up before the decay
    step_size: StrictInt = Field(3, ge=1)
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # step and plateau: the lr factor
    plateau_patience: StrictInt = Field(1, ge=0)  # plateau: epochs without a val-loss gain
    # The epoch whose weights are kept: best val loss, balanced accuracy or macro-F1 (ties: lower
    # val loss), or simply the last one.
    select_by: Annotated[str, registered("selection rule")] = "val_balanced_accuracy"
    early_stopping_patience: StrictInt = Field(0, ge=0)  # epochs without a better select_by; 0: off
    # Keep an exponential moving average of the weights, updated after every optimizer step
    # with this decay (0: off); validation, the kept epoch and the saved model use the average.
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    # full: train everything; head: frozen backbone; unfreeze: head only for unfreeze_after
    # epochs, then everything.
    finetune: Annotated[str, registered("fine-tuning regime")] = "full"
    unfreeze_after: StrictInt = Field(1, ge=1)
    top_blocks: StrictInt = Field(2, ge=1)  # finetune top: the backbone's last stages that train
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # mixup (Zhang et al., ICLR 2018): each training batch blended with itself shifted by one,
    # by a weight drawn from Beta(alpha, alpha), the one-hot labels likewise; 0: off.
    mixup_alpha: float = Field(0.0, ge=0.0)
    # none | weighted_loss (inverse class frequency) | sampler (WeightedRandomSampler-style draws)
    imbalance: Literal["none", "weighted_loss", "sampler"] = "weighted_loss"
    # A metadata column, e.g. source (imbalance: sampler only): every class is drawn equally
    # often and, within a class, every value of the column, so that a hospital that sent most
    # of one class cannot stand for that class by its numbers alone. "": classes only.
    balance_by: str = ""
    batch_augment: BatchAugmentConfig = Field(default_factory=BatchAugmentConfig)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    # Pin CPU kernels (instruction set, MKL path) and threads, and deterministic algorithms on
    # a GPU: the same params and data give the same bytes on CPUs of one kind, with or without
    # AVX-512; CPUs of other kinds differ (oneDNN follows their cache sizes; see
    # cxr.training.runtime). Read by the stages that run a model.
    reproducible: StrictBool = True
    threads: StrictInt = Field(
        2, ge=1, le=1024
    )  # CPU threads; part of the result (same threads, same bytes)
    num_workers: StrictInt = Field(2, ge=0, le=256)
    # CUDA: hold the uint8 training store in GPU memory when it takes <= 25 % of it
    gpu_store: StrictBool = True
    amp: StrictBool = True  # CUDA only: bf16 where supported, else fp16 with a grad scaler
    channels_last: StrictBool = True
    compile: StrictBool = False  # torch.compile the model
    seed: StrictInt = 0

    @field_validator("batch_size")
    @classmethod
    def _trainable_batch(cls, value: int) -> int:
        if value < 2:
            raise ValueError(
                "must be >= 2: BatchNorm layers cannot train on batches of one image, so every "
                "batch would be skipped and nothing trained"
            )
        return value

    @field_validator("weights")
    @classmethod
    def _weights_exist_for_model(cls, value: str, info: ValidationInfo) -> str:
        spec = _model_spec(info)
        if spec is not None:
            spec.check_weights_name(value)
        return value

    @model_validator(mode="after")
    def _warmup_within_training(self) -> TrainConfig:
        if self.scheduler == "cosine" and self.warmup_epochs > self.epochs:
            raise ValueError(
                f"train.warmup_epochs ({self.warmup_epochs:g}) must not exceed train.epochs "
                f"({self.epochs}): the lr would never reach its peak"
            )
        return self

    @model_validator(mode="after")
    def _balance_by_draws(self) -> TrainConfig:
        if self.balance_by and self.imbalance != "sampler":
            raise ValueError(
                f"train.balance_by ({self.balance_by!r}) weighs the draws of "
                f"imbalance: sampler, but train.imbalance is {self.imbalance}: set "
                'train.imbalance: sampler, or train.balance_by: ""'
            )
        return self

    @model_validator(mode="after")
    def _top_on_cached_features(self, info: ValidationInfo) -> TrainConfig:
        models = _registry(info, "model")
        spec = models[self.model] if models is not None and self.model in models else None
        if self.finetune == "top" and spec is not None and spec.stages is None:
            raise ValueError(
                f"train.finetune: top is not supported for {self.model}; use head, unfreeze "
                "or full, or an efficientnet_lite* model"
            )
        if self.finetune == "top" and self.batch_augment.enabled:
            raise ValueError(
                "train.finetune: top trains the last stages on their cached input, computed "
                "once per image: set train.batch_augment.enabled: false (augment offline "
                "with the augment stage instead), or use finetune: full"
            )
        return self

    @field_validator("image_size")
    @classmethod
    def _large_enough_for_model(cls, value: int, info: ValidationInfo) -> int:
        spec = _model_spec(info)
        if spec is not None and value < spec.min_size:
            raise ValueError(f"{spec.name} needs inputs of at least {spec.min_size} px")
        return value


def _model_spec(info: ValidationInfo) -> Any:
    """The registered spec of the train.model being validated; None without the models
    registry, or when the model name itself was rejected."""
    models, model = _registry(info, "model"), info.data.get("model")
    return models[model] if models is not None and model in models else None


@dataclass(config=_STRICT)
class EvaluateConfig:
    batch_size: StrictInt = Field(64, ge=1)
    bootstrap_resamples: StrictInt = Field(1000, ge=0, le=1_000_000)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    seed: StrictInt = 0
    calibration_bins: StrictInt = Field(15, ge=2, le=100)  # equal-width confidence bins for ECE
    temperature_scaling: StrictBool = (
        True  # fit T on the val split; report calibration before/after
    )
    # Metadata columns (data/metadata.csv) the test results are broken down by; `age` in the
    # bands below. Columns the source lacks are skipped and listed in the report.
    subgroups: tuple[str, ...] = ("source", "sex", "view", "age")
    age_bands: tuple[int, ...] = (40, 60, 80)  # band edges in years: <40, 40-59, 60-79, 80+
    # Folders scored by the final model after training (same layouts as data.source), each
    # with its classes a subset of the model's; relative paths start at the project root.
    external: tuple[str, ...] = ()

    @field_validator("age_bands")
    @classmethod
    def _increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(b <= a for a, b in itertools.pairwise(value)) or value[0] <= 0:
            raise ValueError("must be one or more positive ages in increasing order")
        return value

    @field_validator("subgroups", "external")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value) or any(not v.strip() for v in value):
            raise ValueError("must be distinct, non-empty names")
        return value


@dataclass(config=_STRICT)
class LimeConfig:
    """LIME (Ribeiro et al., 2016) beside Grad-CAM: superpixels switched off at random."""

    # perturbed copies scored per image explained (one forward pass each; 200: within LIME's
    # seed noise of 300, benchmarks/explanation_cost.py)
    num_samples: StrictInt = Field(200, ge=10)
    segments: StrictInt = Field(40, ge=2)  # SLIC superpixels per image (the features LIME weighs)
    images_per_class: StrictInt = Field(1, ge=0)  # method figures per class and outcome


@dataclass(config=_STRICT)
class FaithfulnessConfig:
    """Deletion/insertion AUC (Petsiuk et al., 2018) of each saliency method."""

    images: StrictInt = Field(24, ge=0)  # test images scored (spread over the classes); 0: off
    steps: StrictInt = Field(16, ge=2)  # pixels are removed/inserted in this many equal steps
    methods: tuple[Annotated[str, registered("saliency method")], ...] = (
        "gradcam",
        "gradcam++",
        "lime",
        "random",
    )
    seed: StrictInt = 0


@dataclass(config=_STRICT)
class GradcamConfig:
    images_per_class: StrictInt = Field(3, ge=1)
    target_layer: str = "auto"  # `auto`: deepest of ModelSpec.cam_layers with a large map
    min_map_size: StrictInt = Field(8, ge=1)  # `auto`: smallest heat-map side (cells) to accept
    method: Annotated[str, registered("explanation method")] = "gradcam"
    overlay_alpha: float = Field(0.45, ge=0.0, le=1.0)
    lime: LimeConfig = Field(default_factory=LimeConfig)
    faithfulness: FaithfulnessConfig = Field(default_factory=FaithfulnessConfig)


@dataclass(config=_STRICT)
class ClaheConfig:
    clip_limit: float = Field(0.01, gt=0.0, le=1.0)  # normalised clip limit (scikit-image)
    tiles: StrictInt = Field(8, ge=1, le=64)  # contextual regions per image side


@dataclass(config=_STRICT)
class WhiteBalanceConfig:
    saturation: float = Field(1.0, ge=0.0, lt=50.0)  # percent of pixels clipped at each end


@dataclass(config=_STRICT)
class PreprocessConfig:
    """Intensity preprocessing after the resize (cxr.training.preprocessing), saved with the
    model."""

    method: Annotated[str, registered("preprocessing method")] = "none"
    clahe: ClaheConfig = Field(default_factory=ClaheConfig)
    white_balance: WhiteBalanceConfig = Field(default_factory=WhiteBalanceConfig)


@dataclass(config=_STRICT)
class EmbeddingsConfig:
    """t-SNE map of the penultimate-layer embeddings (cxr.evaluation.embeddings)."""

    splits: tuple[Literal["train", "val", "test"], ...] = ("train", "test")
    max_images: StrictInt = Field(2000, ge=10)  # per split, a seeded sample beyond this
    perplexity: float = Field(30.0, gt=1.0)  # lowered to (images - 1) / 3 on small sets
    seed: StrictInt = 0

    @field_validator("splits")
    @classmethod
    def _some_splits(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("must name one or more of train, val, test, each once")
        return value


@dataclass(config=_STRICT)
class DeferralConfig:
    """Selective prediction: refer images below a confidence threshold to a radiologist."""

    # The highest error rate allowed on the images the model keeps (judged on val).
    target_risk: float = Field(0.05, gt=0.0, lt=1.0)
    # empirical: val's observed error on kept images <= target_risk; upper: its one-sided
    # Clopper-Pearson upper bound at `confidence` <= target_risk (holds for new images with
    # that probability, at the price of a lower coverage).
    bound: Literal["empirical", "upper"] = "empirical"
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    # Calibrated confidences: the temperature fitted on val by the evaluate stage.
    calibrated: StrictBool = True


@dataclass(config=_STRICT)
class ConformalConfig:
    """Conformal prediction sets (cxr.evaluation.conformal), calibrated on val."""

    # lac: smallest sets on average; aps, raps: sets that grow with the model's uncertainty.
    method: Literal["lac", "aps", "raps"] = "lac"
    # The true class is in the set with probability >= 1 - alpha.
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    # Calibrate each true class on its own images: the guarantee then holds per class.
    mondrian: StrictBool = False
    # aps and raps break ties in val's scores at random, and raps tunes its penalty on a
    # random part of val: both seeded here
    seed: StrictInt = 0

    @model_validator(mode="after")
    def _mondrian_needs_lac(self) -> ConformalConfig:
        # MAPIE calibrates one class at a time only with the lac score (its aps and raps
        # scores refuse a calibration set with a single label)
        if self.mondrian and self.method != "lac":
            raise ValueError(
                f"conformal.mondrian: true needs conformal.method: lac (got {self.method!r}); "
                "set method: lac, or mondrian: false"
            )
        return self


@dataclass(config=_STRICT)
class AuditConfig:
    """The shortcut audit (cxr.evaluation.audit): occlusion of the lung field and probes."""

    # The lung field of an image without a lung mask: x0, y0, x1, y1 as fractions of the side.
    box: tuple[float, float, float, float] = (0.12, 0.1, 0.88, 0.9)
    fill: Literal["black", "mean"] = "black"  # what hidden pixels become
    probe_folds: StrictInt = Field(5, ge=2)  # patient-grouped folds of the embedding probes
    probe_c: float = Field(1.0, gt=0.0)  # inverse L2 strength of the probes' regression
    seed: StrictInt = 0

    @field_validator("box")
    @classmethod
    def _inside_the_image(
        cls, value: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = value
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError("must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
        return value


@dataclass(config=_STRICT)
class TrackingConfig:
    experiment: str = "cxr-classification"
    # false: an unreachable tracking server only warns, and the pipeline runs untracked.
    required: StrictBool = True
    # Model-registry name the trained model is registered under; empty: log it, don't register.
    registered_model: str = ""


@dataclass(config=_STRICT)
class Params:
    lr: float = Field(5e-4, gt=0.0, le=1.0)  # finite (see _STRICT); above 1 every model diverges
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gradcam: GradcamConfig = Field(default_factory=GradcamConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    deferral: DeferralConfig = Field(default_factory=DeferralConfig)
    conformal: ConformalConfig = Field(default_factory=ConformalConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


# Pydantic names the member of a union that failed ("int", "literal['majority']", ...) in the
# error location; users know keys, not union members, so those parts are dropped.
_UNION_MEMBER_PARTS = {"int", "float", "str", "bool", "list", "tuple", "dict", "none"}


def _key_path(loc: tuple[Any, ...]) -> str:
    parts = [
        str(part)
        for part in loc
        if not (isinstance(part, str) and ("[" in part or part in _UNION_MEMBER_PARTS))
    ]
    return ".".join(parts) or "(top level)"


def _describe(errors: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Pydantic's errors as messages by dotted key."""
    messages: dict[str, list[str]] = {}
    for error in errors:
        key = _key_path(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        unknown = error["type"] in {"extra_forbidden", "unexpected_keyword_argument"}
        if unknown:
            message = "unknown key (a typo?); params.yaml names every key, with a comment"
        elif not error["type"].startswith("missing") and not isinstance(
            error.get("input"), dict
        ):  # a whole section's input says nothing the message does not
            # redacted: the rejected value may be a URL with a password in it
            message = f"{message} (got {redact(repr(error.get('input')))})"
        if message not in messages.setdefault(key, []):
            messages[key].append(message)
    return messages


def _is_section(annotation: Any) -> bool:
    """Whether a field holds a nested params section (a config dataclass)."""
    return isinstance(annotation, type) and hasattr(annotation, "__pydantic_fields__")


def _flow(value: Any) -> str:
    """One YAML value on one line: `4`, `[.png, .jpg]`, `{}`."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20)
    return text.removesuffix("\n...\n").strip()


def _yaml_lines(name: str, value: Any, indent: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        children = [line for k, v in value.items() for line in _yaml_lines(k, v, indent + "  ")]
        return [f"{indent}{name}:", *children]
    return [f"{indent}{name}: {_flow(value)}"]


def _default_yaml(name: str, annotation: Any, default: Any) -> str:
    """`name: <default>` as params.yaml text (a block of lines for a whole section)."""
    plain = TypeAdapter(annotation).dump_python(default, mode="json")
    return "\n".join(_yaml_lines(name, plain))


def missing_keys(section: type, raw: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Every key of `section` (a config dataclass, recursively) absent from `raw`, with the
    params.yaml text of its default. Only sections nest; list items keep their own defaults."""
    missing: dict[str, str] = {}
    for name, field in section.__pydantic_fields__.items():
        key = f"{prefix}{name}"
        if name not in raw:
            default = field.get_default(call_default_factory=True)
            missing[key] = _default_yaml(name, field.annotation, default)
        elif _is_section(field.annotation) and isinstance(raw[name], dict):
            missing.update(missing_keys(field.annotation, raw[name], f"{key}."))
    return missing


def _missing_messages(missing: dict[str, str]) -> dict[str, list[str]]:
    messages = {}
    for key, text in missing.items():
        parent = key.rpartition(".")[0]
        where = f"under `{parent}:`" if parent else "at the top level"
        if "\n" in text:  # a whole section: its block, indented below the message
            block = "\n      ".join(text.splitlines())
            messages[key] = [f"missing; add it {where} (the defaults):\n      {block}"]
        else:
            messages[key] = [f"missing; add `{text}` {where} (the default)"]
    return messages


_PARAMS = TypeAdapter(Params)


def parse_params(
    raw: dict[str, Any], registries: Iterable[Registry] = (), source: str = "params.yaml"
) -> Params:
    """Validate a params mapping; raise ParamsError naming every missing, unknown or bad key.
    Names are checked against the `registries` given (see the module's docstring).

    Every key is required: code defaults exist only to be named in the error."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source} must hold a mapping of keys, got {type(raw).__name__}")
    messages = _missing_messages(missing_keys(Params, raw))
    context = {"registries": {registry.kind: registry for registry in registries}}
    params = None
    try:
        params = _PARAMS.validate_python(raw, context=context)
    except ValidationError as err:
        for key, found in _describe(err.errors()).items():
            messages.setdefault(key, []).extend(found)
    if messages or params is None:
        lines = [f"  {key}: {' | or: '.join(found)}" for key, found in messages.items()]
        raise ParamsError(f"{source} has missing or invalid values:\n" + "\n".join(lines))
    return params


def read_params_file(path: Path | str = "params.yaml") -> dict[str, Any]:
    """The raw params mapping, as DVC sees it."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run stages from the project root")
    with path.open() as handle:
        raw = yaml.safe_load(handle) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of keys, got {type(raw).__name__}")
    return raw


def load_params(path: Path | str = "params.yaml", registries: Iterable[Registry] = ()) -> Params:
    """Read and validate params.yaml (names against `registries`, see `parse_params`)."""
    return parse_params(read_params_file(path), registries, str(path))
