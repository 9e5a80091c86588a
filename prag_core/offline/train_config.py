"""What a document's pairs depend on: the training config, without importing torch (`prag --help` reads its
defaults; offline/train.py runs it)."""

import math
from dataclasses import asdict, dataclass

from prag_core.pairs.choices import INITS

DTYPE_NAMES = ("float32", "bfloat16", "float16")  # TrainConfig.dtype: torch dtype names
OBJECTIVES = ("ntp", "distill", "both")  # train.py's docstring


@dataclass(frozen=True)
class TrainConfig:
    """What a document's pairs depend on (recorded in every file's metadata as `training`).

    targets: FFN projection names (None = all of the architecture's); dtype: the pairs' dtype;
    seed: the B init's seed; init: how B starts (choices.INITS: shared, document, orthogonal);
    construction: samples.build_samples' construction; augmentation: a digest of the augmentation settings
    the sequences came from (build sets it, so another augmenter re-encodes), None when not recorded."""

    rank: int = 2
    alpha: float = 16.0
    lr: float = 3e-3
    epochs: int = 4
    targets: tuple | None = None
    dtype: str = "float32"
    seed: int = 0
    construction: str = "prag"
    init: str = "document"
    objective: str = "ntp"
    warmup: str | None = None  # the warm-up pair's sha256 (warmup.py), None without one
    augmentation: str | None = None

    def __post_init__(self):
        if self.rank < 1 or self.epochs < 1:
            raise ValueError(
                f"training config: rank and epochs must be ≥ 1, got rank {self.rank}, epochs {self.epochs}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)) or not math.isfinite(self.alpha):
            raise ValueError(
                f"training config: lr must be a finite number > 0 and alpha finite, got lr {self.lr}, "
                f"alpha {self.alpha}"
            )
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"training config: dtype {self.dtype!r}; choose from {', '.join(DTYPE_NAMES)}")
        if self.dtype == "float16":  # no fp32 master pairs or loss scaling here: the loss is NaN within steps
            raise ValueError(
                "training config: dtype float16 cannot train (its range overflows without fp32 master "
                "weights and loss scaling); train in float32 or bfloat16 and store the pairs in fp16 "
                "with --store-dtype fp16"
            )
        if self.init not in INITS:
            raise ValueError(f"training config: init {self.init!r}; choose from {', '.join(INITS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"training config: objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))

    def to_dict(self):
        """The config as recorded: every field (targets as a list)."""
        return {**asdict(self), "targets": list(self.targets) if self.targets is not None else None}
