"""The one configuration model of an adaptation run.

The same frozen pydantic model is the Prefect flow's parameters (the UI renders it as
a form), the source of the CLI's options (``flows/cli.py`` derives them from the field
descriptions below) and the training worker's input (serialized to JSON in the run
directory). Field names are unique across sections so that each maps to one CLI flag.

Rules:

- ``strategy`` is one of the strategy models, chosen by ``name``. A field of another
  strategy is dropped when the flows' parameters are validated (the Prefect form keeps the
  previous tab's fields when the strategy tab changes, and the server's JSON schema lets
  them through: ``propertyNames`` lists every strategy field, instead of
  ``additionalProperties: false``); :func:`load_config` (config files, the CLI) reports it
  as an error naming the strategy it belongs to. A field of no strategy is always an error.
- ``lm`` holds what only language-model runs read (task ``causal_lm``, domain adaptation),
  so the classification form stays short. Configs recorded before it existed kept those
  fields under ``data`` / ``training``; they are moved into ``lm`` when read.

S3 endpoint and credentials are deliberately absent: they come from the environment
or a Prefect block (see ``tasks/s3.py``), never from parameters.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from adaptflow.tasks.errors import ConfigError, Problem
from adaptflow.tasks.strategies import (  # the strategy section's models are part of the config: re-exported
    POOLING_HELP,  # noqa: F401
    STRATEGY_CLASSES,
    STRATEGY_FIELDS,
    STRATEGY_NAMES,
    STRICT,
    TASK_STRATEGY_NAMES,  # noqa: F401
    DomainAdaptation,  # noqa: F401
    FullFineTuning,  # noqa: F401
    Lora,  # noqa: F401
    PartialFineTuning,  # noqa: F401
    Pooling,  # noqa: F401
    StrategyConfig,
    TransferLearning,
)
from adaptflow.tasks.strategies import check_config as check_strategy

SAMPLE_DATA = "sample://reviews"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SLUG_LENGTH = 40
"""Characters of a derived name taken from the data's name; the strategy's name follows."""


def valid_name(name: str) -> bool:
    """The registry's name rule (models and aliases): 1-63 lowercase letters, digits, '.', '_', '-', no '..'."""
    return bool(NAME_PATTERN.match(name)) and ".." not in name


def validate_name(name: str, what: str = "model name") -> str:
    """``name`` when it follows :func:`valid_name`; else one ConfigError naming ``what``."""
    if not valid_name(name):
        raise ConfigError(
            Problem(
                f"{what} {name!r}",
                "not a valid registry name",
                "use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        )
    return name


DEFAULT_APPROVAL_TIMEOUT_S = 12 * 3600
"""How long a promotion waits for approval by default: a working day after a nightly run."""
MAX_APPROVAL_TIMEOUT_S = 7 * 24 * 3600
"""The longest wait accepted: the paused run holds the model's retrain lock meanwhile."""


def slug(text: str, max_length: int = SLUG_LENGTH, empty: str = "model") -> str:
    """``text`` as the start of a registry name: ASCII lowercase letters, digits and single '-'.

    Accents are dropped (``Rëviews`` -> ``reviews``, ``Straße`` -> ``strasse``), every other run of characters becomes
    one '-', and the result is cut to ``max_length``; ``empty`` when nothing is left.
    Valid by construction: no '.', so no '..'.
    """
    ascii_text = unicodedata.normalize("NFKD", text.casefold()).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")[:max_length].strip("-") or empty


STRATEGY_HELP = (
    "How the model is adapted. Fields of another strategy are ignored (the Prefect form keeps them when the "
    "strategy tab changes); in config files and on the command line they are an error. A field of no strategy "
    "is always an error."
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Frozen):
    """Where the task data is and how to read it."""

    data: str = Field(
        SAMPLE_DATA,
        description="Training data: a CSV, TSV, JSONL or Parquet file, an s3:// URI of one, "
        "a `datasets` folder saved with save_to_disk, or a Hugging Face hub dataset name. "
        f"'{SAMPLE_DATA}' is the small sentiment set bundled with AdaptFlow.",
    )
    eval_data: str | None = Field(
        None,
        description="Evaluation data in the same forms as `data`. When empty, a seeded, "
        "stratified `eval_fraction` of `data` is held out instead (or the 'validation'/'test' "
        "split of a datasets folder or hub dataset).",
    )
    text_column: str | None = Field(
        None,
        description="Column holding the text. Empty: the only text column besides the label "
        "(an error lists the columns when there are several).",
    )
    eval_text_column: str | None = Field(
        None,
        description="Text column of the evaluation file when it is named differently from "
        "the training file's (e.g. SST-2 dev calls it 'content').",
    )
    text_pair_column: str | None = Field(
        None,
        description="Second text column for sentence-pair tasks (entailment, paraphrase); empty for single-text classification.",
    )
    label_column: str = Field("label", description="Column holding the class label (strings or integers).")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Share of `data` held out for evaluation when `eval_data` is empty.")
    validation_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the training rows held out as a validation split for early stopping "
        "and periodic evaluation, so the evaluation set is never used to choose anything. "
        "0 uses the evaluation set for those.",
    )
    max_train_samples: int | None = Field(
        None, ge=1, description="Use at most this many training rows (a seeded, stratified sample) for quick runs."
    )
    max_eval_samples: int | None = Field(None, ge=1, description="Evaluate on at most this many rows (a seeded, stratified sample).")
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per example; longer texts are truncated.")
    data_seed: int = Field(42, description="Seed for the held-out splits and row sampling.")


class TrainingConfig(_Frozen):
    """Optimisation hyperparameters."""

    learning_rate: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate. Empty: the strategy's default (transfer 2e-3, partial 5e-4, full 1e-4, lora 1e-3).",
    )
    epochs: int = Field(1, ge=1, le=1000, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(32, ge=1, le=65536, description="Examples per step on each process.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps whose gradients add up before an update.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of the steps spent warming the learning rate up.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warm-up."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    layer_lr_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: the top transformer block trains at this factor times the peak "
        "rate, each block below at this factor once more, the embeddings lowest. 1: every layer at the peak rate. "
        "Worth a try (0.8-0.95) for deep models on small data; on MiniLM-L6 with 8,000 SST-2 examples it cost accuracy.",
    )
    head_lr_multiplier: float = Field(
        1.0,
        gt=0,
        le=1000,
        description="The new task head trains at the peak rate times this factor (it starts from random weights while "
        "the backbone is already trained).",
    )
    length_group_batches: int = Field(
        50,
        ge=1,
        le=100000,
        description="Length-grouped batches: the shuffled training rows are cut into groups of this many batches and "
        "sorted by length inside each group, so a batch holds rows of similar length and pads little (faster). "
        "1: every batch is a random draw (most padding, most varied batches).",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradients are clipped to this global norm.")
    seed: int = Field(42, description="Seed for initialisation, dropout and shuffling.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto",
        description="Autocast precision. 'auto': bf16 where the hardware computes it natively (Ampere or newer "
        "GPUs, CPUs with AVX512-BF16/AMX), otherwise full fp32. 'bf16' forces it, 'fp16' needs a GPU, 'no' is fp32.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute the backbone's activations during the backward pass instead of keeping them: "
        "less memory for longer sequences or bigger batches, about 30% more compute.",
    )
    eval_every: int | None = Field(
        None, ge=1, description="Evaluate every N optimizer steps (loss curves, early stopping); empty: once per epoch."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop when the evaluation loss has not improved for N evaluations; empty: never."
    )
    checkpoint_every: int | None = Field(None, ge=1, description="Save a resumable checkpoint every N optimizer steps; empty: none.")
    checkpoint_uri: str | None = Field(
        None,
        description="An s3:// prefix where checkpoints are mirrored (the newest two), so that a retry on another "
        "machine resumes from them. Empty: checkpoints stay in the run folder.",
    )
    log_every: int = Field(10, ge=1, description="Report the training loss every N optimizer steps.")
    time_limit_s: float | None = Field(
        None,
        gt=0,
        description="Stop training once the training loop has run this many seconds (checked after every optimizer "
        "step; the model trained so far is evaluated and saved). Empty: no limit.",
    )


class LanguageModelConfig(_Frozen):
    """Settings of language-model runs only: task 'causal_lm' and domain adaptation (domain text).
    A classification run ignores this section."""

    prompt_column: str = Field("prompt", description="Causal LM data: column holding the prompt (its tokens get no loss).")
    response_column: str = Field("response", description="Causal LM data: column holding the response the model learns to write.")
    messages_column: str | None = Field(
        None,
        description="Causal LM data in chat format: column holding a list of {role, content} messages; the last "
        "assistant message is the response. Formatted with the tokenizer's chat template when it has one.",
    )
    packing: bool = Field(
        False,
        description="Causal LM / domain text: pack several examples into each max_length block (fewer padding "
        "tokens; no example is split across blocks).",
    )
    generation_samples: int = Field(
        8, ge=0, le=10000, description="Causal LM: evaluation prompts answered by generation for exact match and ROUGE-L (0: none)."
    )
    generation_max_new_tokens: int = Field(32, ge=1, le=4096, description="Causal LM: tokens generated per evaluation prompt.")


LM_FIELDS_MOVED_FROM = {
    "data": ("prompt_column", "response_column", "messages_column", "packing"),
    "training": ("generation_samples", "generation_max_new_tokens"),
}
"""Where the ``lm`` fields lived before they got their own section (configs recorded in registered versions)."""


class LaunchConfig(_Frozen):
    """Where and how the training processes run."""

    launcher: Literal["local", "multinode", "ray", "trainjob", "pytorchjob"] = Field(
        "local",
        description="'local': all training processes on this machine (torchrun, or `accelerate launch` with "
        "accelerate_config). 'multinode': this machine is node `node_rank` of `nnodes`; the same torchrun "
        "agent runs on every node (started by srun on Slurm, or by hand) and meets the others at "
        "master_addr:master_port (elastic with min_nodes/max_nodes). 'ray': Ray Train's TorchTrainer runs "
        "num_processes workers on the Ray cluster at ray_address, keeps checkpoints on S3 and restarts lost "
        "workers from the last one (max_restarts times; needs the 'ray' extra). 'trainjob': the train task creates a "
        "Kubeflow Trainer v2 TrainJob of `nnodes` pods on the k8s_runtime runtime (infra/k8s/trainjob.yaml) and "
        "follows it. 'pytorchjob': the same for clusters still on the v1 training operator (PyTorchJob, "
        "infra/k8s/pytorchjob.yaml). On Kubernetes, work_dir must be on the shared volume k8s_work_claim.",
    )
    num_processes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Training processes per node (data parallel). On CPU they use gloo; on GPUs, one per GPU. "
        "'ray': the number of Ray Train workers in all, placed on the cluster's nodes by Ray.",
    )
    accelerate_config: str | None = Field(
        None,
        description="An `accelerate` config: a file, or the name of one shipped in infra/accelerate "
        "(single_gpu, ddp, fsdp, deepspeed_zero2, deepspeed_zero3, multi_node). Launches with `accelerate launch`.",
    )
    nnodes: int = Field(1, ge=1, le=4096, description="Machines taking part ('multinode' launcher).")
    node_rank: int = Field(0, ge=0, description="This machine's rank among the nodes; node 0 hosts the rendezvous and writes the outputs.")
    master_addr: str | None = Field(None, description="Address of node 0 as the other nodes reach it ('multinode' launcher).")
    master_port: int = Field(29500, ge=1024, le=65535, description="Rendezvous port on node 0.")
    min_nodes: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="'multinode' only: make the run elastic (torchrun's c10d rendezvous). It starts once "
        "min_nodes have joined and carries on while at least min_nodes remain; a node that drops out and comes "
        "back rejoins, and the workers resume from the last checkpoint. Empty: a fixed group of nnodes.",
    )
    max_nodes: int | None = Field(None, ge=1, le=4096, description="'multinode', elastic: the most nodes that may join (default: nnodes).")
    max_restarts: int = Field(
        0,
        ge=0,
        le=100,
        description="'multinode': times torchrun's agent restarts the workers after a failure or a change of "
        "nodes before it gives up (elastic runs need at least 1). 'ray': Ray Train's FailureConfig(max_failures), "
        "times the worker group is restarted after a worker or its node is lost. Set training.checkpoint_every "
        "so a restart resumes instead of starting over.",
    )
    ray_address: str | None = Field(
        None,
        description="'ray': the Ray cluster's address (host:port of its head, as `ray start --head` prints). "
        "Empty: RAY_ADDRESS, else the local head of `adaptflow stack up --ray`.",
    )
    ray_cpus_per_worker: float = Field(
        1.0, gt=0, le=1024, description="'ray': CPUs Ray reserves for each training worker (and one GPU each when gpus_per_node > 0)."
    )
    k8s_namespace: str = Field("adaptflow", description="Kubernetes namespace of the TrainJob or PyTorchJob.")
    k8s_image: str = Field("adaptflow-train:latest", description="Training image (infra/Dockerfile) for the training pods.")
    k8s_runtime: str = Field(
        "torch-distributed",
        description="'trainjob': the ClusterTrainingRuntime the TrainJob runs on: Kubeflow's own 'torch-distributed', "
        "or 'adaptflow-torch' from infra/k8s/torch-runtime.yaml.",
    )
    k8s_work_claim: str = Field(
        "adaptflow-work", description="ReadWriteMany volume claim holding work_dir, mounted at the same path in every pod."
    )
    gpus_per_node: int = Field(
        0,
        ge=0,
        le=64,
        description="GPUs requested by each training pod on Kubernetes (0: CPU pods); 'ray': > 0 gives every worker one GPU.",
    )
    retries: int = Field(
        1,
        ge=0,
        le=10,
        description="Times a crashed training is started again. With training.checkpoint_every set it resumes "
        "from the last checkpoint, not from step 0.",
    )

    @model_validator(mode="after")
    def _multinode_needs_an_address(self) -> "LaunchConfig":
        problems = []
        if self.launcher == "multinode" and not self.master_addr:
            problems.append("launch.master_addr is required with the 'multinode' launcher")
        if self.launcher == "multinode" and self.nnodes < 2:
            problems.append("launch.nnodes must be at least 2 with the 'multinode' launcher")
        if self.node_rank >= self.nnodes:
            problems.append(f"launch.node_rank {self.node_rank} must be below launch.nnodes {self.nnodes}")
        if self.launcher == "ray" and self.nnodes != 1:
            problems.append("launch.nnodes is for 'multinode' and Kubernetes: with 'ray', num_processes is the number of workers in all")
        if self.launcher == "ray" and self.accelerate_config:
            problems.append("Ray Train starts the 'ray' launcher's processes: leave launch.accelerate_config empty")
        if (self.min_nodes or self.max_nodes) and self.launcher != "multinode":
            problems.append("launch.min_nodes/max_nodes make a 'multinode' run elastic: use them with that launcher")
        elif self.elastic:
            low, high = self.node_range
            if not low <= self.nnodes <= high:
                problems.append(f"launch.nnodes {self.nnodes} must lie between min_nodes {low} and max_nodes {high}")
            if self.max_restarts < 1:
                problems.append("an elastic run needs launch.max_restarts of at least 1 to take a node back")
            if self.accelerate_config:
                problems.append("an elastic run is started by torchrun: leave launch.accelerate_config empty")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def elastic(self) -> bool:
        """A 'multinode' run whose membership may change (c10d rendezvous)."""
        return self.launcher == "multinode" and (self.min_nodes is not None or self.max_nodes is not None)

    @property
    def node_range(self) -> tuple[int, int]:
        """The fewest and the most nodes of an elastic run."""
        return (self.min_nodes or self.nnodes, self.max_nodes or self.nnodes)


class RegistryConfig(_Frozen):
    """Where the adapted model is registered (the S3 endpoint and keys come from the environment)."""

    register_model: bool = Field(True, description="Register the adapted model as a new version in the S3 registry.")
    model_name: str | None = Field(
        None,
        description="Registry name of the model (lowercase letters, digits, '.', '_', '-'). Empty: '<data name>-<strategy>'.",
    )

    @field_validator("model_name")
    @classmethod
    def _safe_name(cls, name: str | None) -> str | None:
        if name is not None and not valid_name(name):
            raise ValueError(
                "must be 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (no slashes, no '..')"
            )
        return name


class AdaptConfig(_Frozen):
    """Everything that defines one adaptation run."""

    model: str = Field(
        DEFAULT_MODEL,
        description="Pre-trained model: a Hugging Face hub id, a local folder or an s3:// URI of a folder. "
        "The default is bundled with AdaptFlow and works offline.",
    )
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint. Only for checkpoints you trust.")
    task: Literal["classification", "causal_lm"] = Field(
        "classification",
        description="'classification': a label per text (data with a label column). 'causal_lm': fine-tune a "
        "decoder (GPT-2, Llama, Qwen...) to write responses (prompt/response or chat-format data).",
    )
    strategy: StrategyConfig = Field(default_factory=TransferLearning, description=STRATEGY_HELP)
    data: DataConfig = Field(default_factory=DataConfig, description="The task data.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimisation hyperparameters.")
    launch: LaunchConfig = Field(default_factory=LaunchConfig, description="Training processes.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="Model registration.")
    lm: LanguageModelConfig = Field(
        default_factory=LanguageModelConfig,
        title="Language model (causal_lm task, domain adaptation only)",
        description="Prompt/response columns, packing and generation checks of language-model runs; a classification run ignores them.",
    )
    work_dir: str | None = Field(
        None,
        description="Folder for prepared data and run directories. Empty: $ADAPTFLOW_HOME/work (ADAPTFLOW_HOME defaults to ~/.adaptflow).",
    )

    @model_validator(mode="before")
    @classmethod
    def _lm_fields_moved(cls, data: Any) -> Any:
        """Read configs recorded before the ``lm`` section existed (registered versions, old config files)."""
        if not isinstance(data, dict) or not isinstance(data.get("lm", {}), dict):
            return data
        data, lm = dict(data), dict(data.get("lm", {}))
        for section, names in LM_FIELDS_MOVED_FROM.items():
            if isinstance(data.get(section), dict) and any(name in data[section] for name in names):
                data[section] = dict(data[section])
                for name in names:
                    if name in data[section]:
                        lm.setdefault(name, data[section].pop(name))
        if lm:
            data["lm"] = lm
        return data

    @model_validator(mode="after")
    def _cross_field_checks(self) -> "AdaptConfig":
        problems: list[str] = []
        t = self.training
        if t.early_stopping_patience is not None and t.eval_every is None and t.max_steps is not None:
            problems.append("training.early_stopping_patience needs training.eval_every when max_steps is set")
        if t.mixed_precision == "fp16" and not _cuda_available():
            problems.append("training.mixed_precision 'fp16' needs a GPU; use 'bf16' or 'no' on CPU")
        problems += check_strategy(self, _cuda_available)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # ---- derived values -------------------------------------------------------
    def learning_rate(self) -> float:
        return self.training.learning_rate or type(self.strategy).default_learning_rate

    def model_name(self) -> str:
        if self.registry.model_name:
            return self.registry.model_name
        name = Path(self.data.data.rstrip("/")).name.removesuffix(".gz")  # reviews.csv.gz: 'reviews'
        stem = "sample-reviews" if self.data.data == SAMPLE_DATA else Path(name).stem
        return f"{slug(stem)}-{slug(self.strategy.name)}"

    def resolved_work_dir(self) -> Path:
        return Path(self.work_dir).expanduser() if self.work_dir else adaptflow_home() / "work"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def shared_field(name: str, **changes: Any) -> Any:
    """AdaptConfig's field ``name`` (type checks, default, description), with ``changes``, for another
    configuration that runs adaptations too (compare): one definition of each shared section."""
    return FieldInfo.merge_field_infos(AdaptConfig.model_fields[name], **changes)


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def adaptflow_home() -> Path:
    return Path(os.environ.get("ADAPTFLOW_HOME", "~/.adaptflow")).expanduser()


def _cuda_available() -> bool:
    try:
        import torch  # torch loads in seconds: asked only when a setting needs a GPU

        return torch.cuda.is_available()
    except ImportError:  # config can be validated without torch installed
        return False


def load_config(raw: dict[str, Any] | AdaptConfig) -> AdaptConfig:
    """Validate a (possibly nested, partial) dict into an :class:`AdaptConfig`.

    Raises one :class:`ConfigError` listing every problem, each naming its field. Strict:
    a field of another strategy is an error here (config files, the CLI), while the
    flows' parameters (the Prefect form) drop them.
    """
    return validate_strictly(AdaptConfig, raw)


def validate_strictly(model: type[ConfigT], raw: dict[str, Any] | ConfigT) -> ConfigT:
    """``raw`` as a ``model`` (AdaptConfig, CompareConfig), a field of another strategy being an
    error; one :class:`ConfigError` naming every problem."""
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw, context={STRICT: True})
    except ValidationError as exc:
        raise config_error_from(exc) from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a nested dict (validated by :func:`load_config`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(Problem(str(p), "config file not found", "check the path given to --config"))
    try:
        raw = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(Problem(str(p), f"not valid YAML/JSON ({exc})", "fix the syntax")) from None
    if not isinstance(raw, dict):
        raise ConfigError(Problem(str(p), "must hold a mapping of config sections", "see README 'Configuration'"))
    return raw


def config_error_from(exc: ValidationError) -> ConfigError:
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"] if not _is_union_tag(part)]
        where = ".".join(loc) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and len(err["loc"]) >= 2 and _is_union_tag(err["loc"][-2]) and loc[-1] in STRATEGY_FIELDS:
            owners = ", ".join(name for name, cls in STRATEGY_CLASSES.items() if loc[-1] in cls.model_fields)
            problems.append(Problem(where, f"belongs to strategy {owners}, not {err['loc'][-2]}", "remove it, or choose that strategy"))
            continue
        got = err.get("input")
        if loc and not isinstance(got, (dict, list)) and err["type"] != "missing":
            msg += f" (got {got!r})"
        problems.append(Problem(where, msg))
    return ConfigError(problems)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and part in STRATEGY_NAMES
