"""Typed configuration: one object per concern, loaded from TOML and validated once at the edge."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the bad key."""


def registered_tasks() -> list[str]:
    """The names in the task registry, in its order (importing the registry loads torch)."""
    from festa.shared.tasks import TASKS

    return list(TASKS)


def check_task_names(names: list[str]) -> list[str]:
    """`names` unchanged when each is a registered task; ValueError naming the unknown ones."""
    known = registered_tasks()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        what = f"unknown task(s) {unknown}" if unknown else "no task given"
        raise ValueError(f"{what}; choose from {', '.join(known)}")
    return names


def check_wire_dtype(name: str) -> str:
    """`name` unchanged when it is one of the wire's dtypes (`festa.shared.wire.WIRE_DTYPES`)."""
    from festa.shared.wire import WIRE_DTYPES

    if name not in WIRE_DTYPES:
        raise ValueError(f"unknown wire dtype {name!r}; choose from {', '.join(WIRE_DTYPES)}")
    return name


# The site restoration methods (`festa.client.restoration` implements them).
RestorationMethod = Literal["dps", "cddb", "cddb-deep", "blinddps", "gctm"]

# Checked against the task registry and the wire's dtype table, which import torch: lazily, so
# that loading a config stays light until a value is validated.
TaskNames = Annotated[list[str], AfterValidator(check_task_names)]
WireDTypeName = Annotated[str, AfterValidator(check_wire_dtype)]


class FestaModel(BaseModel):
    """Base for every config object: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# How detection tails encode a box (`festa.shared.tasks.detection`). 2: objectness at the box's
# centre cell, the box regressed from that cell and its two nearest neighbours, offsets
# 2·sigmoid − 0.5 (since 2026-12-08). 1 (configs saved without the key): one cell per box,
# sigmoid offsets; its weights decode shifted boxes under code 2, so loading them is refused.
BOX_CODING = 2


class ModelConfig(FestaModel):
    """Sizes of the split ViT shared by every head, the body and every tail."""

    image_size: int = Field(64, ge=16, le=1024)
    patch_size: int = Field(8, ge=2, le=64)
    in_chans: int = Field(1, ge=1, le=3)
    embed_dim: int = Field(128, ge=16)
    depth: int = Field(4, ge=1, le=48)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    num_classes: int = Field(3, ge=2)
    num_box_classes: int = Field(2, ge=1)
    class_names: tuple[str, ...] = Field(
        (), description="names of the classification outputs, from the data; empty: phantom classes"
    )
    box_class_names: tuple[str, ...] = Field(
        (), description="names of the detection classes, from the data; empty: phantom classes"
    )
    pixel_mean: float = Field(0.5, description="heads standardise [0, 1] pixels with this mean")
    pixel_std: float = Field(0.25, gt=0, description="... and this standard deviation")
    box_coding: Literal[2] = Field(
        BOX_CODING, description="how detection tails encode boxes (BOX_CODING); set by festa"
    )

    @model_validator(mode="after")
    def _check_divisibility(self) -> ModelConfig:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be a multiple of num_heads ({self.num_heads})"
            )
        for names, count, key in (
            (self.class_names, self.num_classes, "num_classes"),
            (self.box_class_names, self.num_box_classes, "num_box_classes"),
        ):
            if names and len(names) != count:
                raise ValueError(f"{key} ({count}) differs from the {len(names)} names given")
        return self

    @property
    def grid_size(self) -> int:
        """Tokens per side of the patch grid."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2


PRESETS: dict[str, dict[str, Any]] = {
    # Small enough for CPU tests and the 2-core main job.
    "tiny": dict(image_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4),
    # 128-px real radiographs on a CPU: 16-px patches keep tiny's 8 x 8 token grid (so the
    # detection and segmentation tails see the same grid as at 64 px), with a wider and deeper
    # body (DeiT-Tiny's width, half its depth; 2.7 M body parameters).
    "small128": dict(image_size=128, patch_size=16, embed_dim=192, depth=6, num_heads=3),
    # ViT-B/16 body: 12 blocks, 768 wide, 12 heads (85 M parameters).
    "base": dict(image_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named model size (`tiny`, `small128` or `base`) with optional field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


class OptimConfig(FestaModel):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(32, ge=1)


class DataConfig(FestaModel):
    """Where images come from: `phantoms` (built in) or a folder with a manifest CSV."""

    source: str = "phantoms"
    train_size: int = Field(2000, ge=1, description="phantom images for training")
    val_size: int = Field(400, ge=1, description="phantom images for validation")
    train_split: str = "train"
    val_split: str = "val"


class CentralConfig(FestaModel):
    """`festa train-central`: the pooled-data yardstick."""

    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    tasks: TaskNames = Field(default_factory=registered_tasks)
    epochs: int = Field(8, ge=1)
    seed: int = 0
    device: str = "cpu"


C = TypeVar("C", bound=BaseModel)


def read_toml(
    path: str | Path, error: type[ConfigError] = ConfigError, what: str = "config file"
) -> dict[str, Any]:
    """The raw table of a TOML file; a missing or malformed file raises `error` naming it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise error(f"{what} not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from exc


def load_toml(path: str | Path, cls: type[C], **overrides: Any) -> C:
    """Read a TOML file into `cls`, applying top-level `overrides`; errors name the bad key."""
    return validate(cls, {**read_toml(path), **overrides}, source=str(path))


def validate(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
    """Build `cls` from a dict, turning pydantic errors into one readable ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(root)"
            lines.append(f"  {key}: {err['msg']}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines)) from exc


class ScheduleConfig(FestaModel):
    """The FeSTA round schedule (DESIGN §2).

    Rounds 1..warmup_rounds train everything. After that, every `task_specific_every`-th round
    is task-specific (body frozen, heads/tails train); the others are task-agnostic (the body
    trains on every task's features). The last `finetune_rounds` rounds are task-specific.
    Heads/tails are FedAvg'd within each task every `unify_every` rounds (and always at the end).
    """

    warmup_rounds: int = Field(1, ge=0)
    task_specific_every: int = Field(
        3, ge=0, description="0: never task-specific before fine-tuning"
    )
    finetune_rounds: int = Field(1, ge=0)
    unify_every: int = Field(1, ge=1)

    def phase(self, round_number: int, total_rounds: int) -> str:
        """`warmup`, `task-agnostic`, `task-specific` or `finetune` for a 1-based round."""
        if round_number > total_rounds - self.finetune_rounds:
            return "finetune"
        if round_number <= self.warmup_rounds:
            return "warmup"
        k = self.task_specific_every
        if k and (round_number - self.warmup_rounds) % k == 0:
            return "task-specific"
        return "task-agnostic"

    @staticmethod
    def trains_body(phase: str) -> bool:
        return phase in ("warmup", "task-agnostic")

    def unifies(self, round_number: int, total_rounds: int) -> bool:
        return round_number % self.unify_every == 0 or round_number == total_rounds


class DriftConfig(FestaModel):
    """Client-drift remedies for label-skewed federations (BENCHMARKS.md, "client drift").

    Client side (`festa.shared.train.drift`): `logit_adjustment` tau trains the classifier on
    `logits + tau * log(local class prior)` (balanced softmax / FedLC); `proximal_mu` adds
    FedProx's `mu / 2 * ||w - w_global||^2`; `sampling = "class-balanced"` draws a
    classification site's batches in equal class shares; `client_optimizer = "persist"` keeps each site's
    AdamW state across rounds instead of a fresh optimizer every round. Server side
    (`festa.server.server_optimizer`): FedAvgM / FedAdam / FedYogi on each task's head/tail,
    with Flower's strategy math; `server_lr` is FedAvgM's server learning rate or FedAdam's eta.
    "persist" keeps the state in the client's process: reliable in-process and in a deployed
    site, best effort in Flower's simulation (a virtual node may run in another Ray actor).
    """

    logit_adjustment: float = Field(
        1.0,
        ge=0,
        description="tau; 0: plain cross-entropy. Default 1 (balanced softmax): under the "
        "default Dirichlet 0.5 skew plain FedAvg leaves classification at AUC 0.58",
    )
    proximal_mu: float = Field(0.0, ge=0, description="FedProx mu; 0: off")
    sampling: Literal["shuffle", "class-balanced"] = Field(
        "shuffle",
        description="how a classification site draws its batches: shuffle its pool, or equal "
        "shares of the classes it has (helps at moderate label skew, hurts at extreme skew)",
    )
    client_optimizer: Literal["fresh", "persist"] = "fresh"
    server_optimizer: Literal["fedavg", "fedavgm", "fedadam", "fedyogi"] = "fedavg"
    server_lr: float = Field(1.0, gt=0)
    server_momentum: float = Field(0.9, ge=0, lt=1, description="FedAvgM momentum / Adam beta1")
    server_beta2: float = Field(0.99, ge=0, lt=1, description="FedAdam / FedYogi beta2")
    server_tau: float = Field(1e-3, gt=0, description="FedAdam / FedYogi adaptivity")


class FaultInjection(FestaModel):
    """Chaos testing of simulations: the client at `site` fails in `round` after `after_steps`
    batches, as a hospital whose node crashes mid-round would. Off when `site` is empty."""

    site: str = ""
    round: int = Field(0, ge=0)
    after_steps: int = Field(0, ge=0)


MIN_SECURE_GROUP = 3
"""Fewest sites of one task that secure aggregation runs with: in a group of 2 each site
subtracts its own update from the sum and reads the other's."""
DEPLOYMENT_LABEL_PROTECTION = "local-backward"
"""`label_protection` a deployment runs unless its run config says otherwise: of the designs
measured (BENCHMARKS.md, "Privacy defences") it is the one that leaks nothing through returned
gradients at the smallest accuracy cost (tail-only, the former default, leaves the
classification head untrained)."""


class FederationConfig(FestaModel):
    """One federated run: what `festa simulate` and the deployed ServerApp are given."""

    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig(lr=1e-3, batch_size=16)
    data: DataConfig = DataConfig(train_size=1200, val_size=200)
    schedule: ScheduleConfig = ScheduleConfig()
    drift: DriftConfig = DriftConfig()
    tasks: TaskNames = Field(default_factory=registered_tasks)
    clients: int = Field(6, ge=1, description="clients in a simulation (deployment: the sites)")
    partition: str = Field(
        "dirichlet:0.5", description="natural | dirichlet:ALPHA | quantity | iid"
    )
    rounds: int = Field(12, ge=1)
    local_steps: int = Field(30, ge=1, description="batches each client trains per round")
    wire: WireDTypeName = "fp32"
    permute: bool = False
    token_noise: float = Field(
        0.0,
        ge=0,
        description="client-side Gaussian noise on sent tokens, std relative to the batch's token RMS",
    )
    label_protection: Literal["off", "noise", "tail-only", "local-backward"] = Field(
        "off",
        description="what classification sites do to the gradient they return: off; noise: "
        "label-span Gaussian noise of std label_noise (festa.shared.privacy.label_protection); "
        "tail-only: return zero gradients (nothing label-bearing leaves; their head stays as "
        "initialised and the body learns from the other tasks); local-backward: return zero "
        "gradients and train the head through a copy of the body the server sends each round. "
        "Deployments default to DEPLOYMENT_LABEL_PROTECTION",
    )
    label_noise: float = Field(
        6.0,
        ge=0,
        description="label_protection = noise: std in units of the per-sample label sensitivity",
    )
    secure_aggregation: bool = Field(
        False,
        description="heads/tails are summed under pairwise masks (SecAgg with Shamir-shared "
        "seeds, festa.server.secure_aggregation): the server sees only each task's average; "
        "needs >= MIN_SECURE_GROUP sites per task. Deployments default to on",
    )
    dp_noise: float = Field(
        0.0,
        ge=0,
        description="differential privacy of head/tail updates: each site clips its update to "
        "L2 norm dp_clip and adds Gaussian noise of std dp_noise x dp_clip before it leaves "
        "(festa.shared.privacy.update_dp); 0: off. The run's (epsilon, dp_delta) is in its summary",
    )
    dp_clip: float = Field(1.0, gt=0, description="dp_noise > 0: L2 clipping norm of an update")
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="dp_noise > 0: the delta of (eps, delta)")
    pipeline_depth: int = Field(
        1,
        ge=1,
        le=64,
        description="micro-batches each client keeps in flight to hide WAN latency (K > 1: "
        "async mode only, bounded staleness K-1; see shared/model/pipeline.py)",
    )
    pipeline_body_lr: Literal["constant", "sqrt", "linear"] = Field(
        "constant",
        description="K > 1: the body's learning rate in a pipelined round is lr x 1, "
        "1/sqrt(K) or 1/K (head and tail keep lr); no rule measurably beat constant "
        "(docs/WAN.md, BENCHMARKS.md)",
    )
    mode: Literal["sync", "async"] = "sync"
    step_deadline_s: float = Field(
        60.0, gt=0, description="sync mode: wait this long for a client's step"
    )
    round_timeout_s: float = Field(900.0, gt=0)
    rejoin_wait_s: float = Field(
        0.0,
        ge=0,
        description="a round waits up to this long for sites that dropped out of the last one"
        " (e.g. a restarted site daemon) before it starts without them; 0: never waits",
    )
    seed: int = 0
    device: str = "cpu"
    body_host: str = "127.0.0.1"
    body_port: int = Field(0, ge=0, le=65535, description="0: any free port")
    body_endpoint: str = Field("", description="address clients dial; default host:bound port")
    degrade: Literal["none", "site"] = Field(
        "site", description="site: simulated sites get a degraded scanner (see degraded_sites)"
    )
    scanners: str = Field(
        "default",
        description="degrade: the degraded sites' scanners, in turn: a set of "
        "festa.client.restored_data.SCANNER_SETS (default, lowdose50, blur3) or one SPEC",
    )
    degraded_sites: Literal["half", "all"] = Field(
        "half", description="degrade: the odd-numbered simulated sites, or every site"
    )
    restore: Literal["none", RestorationMethod] = Field(
        "cddb", description="restoration method degraded sites run before training"
    )
    restore_nfe: int | None = Field(10, ge=1, description="network evaluations per image")
    restore_fit: float = Field(
        0.01,
        ge=0,
        description="weight of the final pull of each restored image towards its scan, which "
        "keeps small findings in the training images, noise-only scanners included (0: off)",
    )
    restore_model_dir: str = Field(
        "", description="priors/bridges folder; empty: committed cxr64 (real data) or phantom64"
    )
    restore_cache: str = Field(
        "runs/.restore-cache", description="restored images cached by content hash"
    )
    fault: FaultInjection = FaultInjection()
    federation: str = Field(
        "", description="federation file (TOML) declaring each site's data and task; empty: none"
    )

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        if self.clients < len(self.tasks):
            raise ValueError(f"{self.clients} clients cannot cover {len(self.tasks)} tasks")
        if self.secure_aggregation and self.schedule.unify_every != 1:
            raise ValueError(
                "secure_aggregation needs schedule.unify_every = 1: between unifications the "
                "server would hold each site's own head/tail"
            )
        if self.label_protection != "off" and self.pipeline_depth > 1:
            raise ValueError("label_protection is not implemented for pipeline_depth > 1")
        if self.pipeline_depth > 1 and self.mode != "async":
            raise ValueError(
                f"pipeline_depth {self.pipeline_depth} needs mode = 'async' "
                "(the sync barrier does not pipeline)"
            )
        return self
