"""The recipes' configurations, as plain dataclasses: no torch, no Ray, so the command line
can be built from them instantly (``lossforge --help``) and they can cross the Ray boundary.

Each field's ``metadata`` carries its ``--help`` text (and, where useful, ``choices`` or
``cli=False`` for fields that are not command-line options). The command line is derived from
these fields (``search.engine.options.add_dataclass_options``), so an option is written down once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainers.errors import UsageError

PU_FITNESS = ("pu_auc", "pu_pauc", "lee_liu", "pu_accuracy", "pu_f1")
TRUTH_FITNESS = ("truth_val_f1",)
FITNESS_NEEDS_PRIOR = ("pu_accuracy", "pu_f1")
DEFAULT_FITNESS = "pu_auc"  # a single training run's epoch selection (train-pu, the benchmarks' harness)
# A search's member metric: the one whose paired margin tracks test F1 best in
# benchmarks/proxy_validity.py on the three dev sets (rho 0.85/0.85/0.89 against pu_auc's 0.82/0.86/0.85,
# and it ranks the top half of the losses better on all three).
SEARCH_DEFAULT_FITNESS = "pu_pauc"
PREFERENCE_MODES = ("encoder", "causal", "pair", "cross")
LABELLINGS = ("scar", "sar-group", "sar-score")  # benchmark mode: how labelled positives are drawn
VAL_METRICS = ("auc", "f1", "ap")  # what a labelled validation set (--val, --val-size) measures
# With a labelled validation set: the member metric it drives. F1 at the run's threshold ranked the top half
# of the losses better than AUC at N = 200 on 2 of 3 measured set x labelling cells, and picked better than
# average precision on SMS and RT (benchmarks/RESULTS.md).
DEFAULT_VAL_METRIC = "f1"
# A searched loss by default, not PAN: at train-pu's defaults (30 epochs, PU only) v2 beat PAN by 2.3
# F1 and naive by 2.1 on average over ten sets, and v3 collapsed on one (benchmarks/RESULTS.md,
# "train-pu's default loss").
DEFAULT_PU_LOSS = "zoo:pu-taylor-v2"
LABELLING_HELP = ("benchmark data: how the labelled positives are drawn: scar (uniformly), sar-group (a random "
                  "half of the positive groups labelled 5x as often), sar-score (propensity logistic in a random "
                  "direction)")
VAL_HELP = ("a labelled validation set (columns embedding, label; a file, folder or URI): it then drives the "
            "fitness, the epoch kept and the decision threshold")
VAL_SIZE_HELP = ("benchmark data: draw this many random training rows as the labelled validation set (they are "
                 "removed from training); 0: none")


def driver_path(value: str | None) -> str | None:
    """A local path made absolute, so that Ray workers, which run inside their own trial folders,
    and a resume started from another folder read the file the command was given. URIs stay as
    given, and so does "~" (expanded on each machine)."""
    if value is None or "://" in value or value.startswith("~"):
        return value
    return str(Path(value).absolute())


def absolute_paths(obj, *names: str, loss: str | None = None) -> None:
    """``driver_path`` on the named fields of ``obj``, and on its ``loss`` field when that names a
    loss file (a baseline name or zoo:NAME stays)."""
    for name in names:
        value = getattr(obj, name)
        setattr(obj, name, driver_path(str(value)) if value is not None else None)
    if loss and isinstance(getattr(obj, loss), str) and getattr(obj, loss).endswith(".json"):
        setattr(obj, loss, driver_path(getattr(obj, loss)))


def opt(default=None, help: str = "", **cli):
    """A config field with its command-line help; ``cli=False`` keeps it off the command line."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


def _cuda_check(device: str) -> None:
    if device.startswith("cuda"):
        import torch  # only when a GPU is asked for: the config itself stays light

        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but torch sees no CUDA device")



def check_validation_options(labelling: str, val: str | None, val_size: int, val_metric: str) -> None:
    if labelling not in LABELLINGS:
        raise UsageError(f"--labelling must be one of {LABELLINGS}, got {labelling!r}")
    if val_size < 0:
        raise UsageError(f"--val-size must be >= 0, got {val_size}")
    if val is not None and val_size:
        raise UsageError("--val and --val-size exclude each other: pass one")
    if val_metric not in VAL_METRICS:
        raise UsageError(f"--val-metric must be one of {VAL_METRICS}, got {val_metric!r}")


@dataclass
class PUConfig:
    loss: str = opt(DEFAULT_PU_LOSS, "naive|oracle|upu|nnpu|vpu|pan, a Taylor loss .json, or zoo:NAME "
                                     f"(default: {DEFAULT_PU_LOSS}, a searched loss)")
    labelled_frac: float = opt(0.1, "benchmark data (truth 'label'): share of positives drawn as labelled")
    labelling: str = opt("scar", LABELLING_HELP, choices=LABELLINGS)
    val: str | None = opt(None, VAL_HELP)
    val_size: int = opt(0, VAL_SIZE_HELP)
    val_metric: str = opt(DEFAULT_VAL_METRIC, "with a labelled validation set: its fitness", choices=VAL_METRICS)
    prior: float | None = opt(None, "class prior for upu/nnpu (benchmark data: the truth; else with --val: its positive share)")
    seed: int = opt(0, "PU labelling, validation split, initial weights and batch order")
    epochs: int = opt(30, "training epochs (the epoch with the best validation fitness is kept)")
    batch_size: int = opt(256, "pairs of (labelled, unlabelled) points per step")
    lr: float = opt(1e-3, "AdamW learning rate")
    weight_decay: float = opt(1e-4, "AdamW weight decay")
    hidden: int = opt(256, "MLP width")
    depth: int = opt(2, "MLP hidden layers (0: a linear model)")
    dropout: float = opt(0.0, "dropout between hidden layers")
    val_frac: float = opt(0.2, "share of labelled and of unlabelled points held out for validation")
    fitness: str = opt(DEFAULT_FITNESS, "validation fitness (PU information only)", choices=PU_FITNESS + TRUTH_FITNESS)
    # Keep the epoch with the best PU validation fitness (labelled vs unlabelled only), as
    # early stopping would; without it, methods that overfit the few labelled positives
    # (VPU, PAN) are judged on their collapsed last epoch.
    select_epoch: bool = opt(True, cli=False)
    device: str = opt("cpu", "cpu or cuda")
    # method hyper-parameters
    pan_lambda: float = opt(0.1, "PAN's game weight (chosen by PU validation fitness on the default problem)")
    nnpu_beta: float = opt(0.0, "nnPU's beta", cli=False)
    nnpu_gamma: float = opt(1.0, "nnPU's gamma", cli=False)
    vpu_alpha: float = opt(0.3, "VPU's MixUp Beta(alpha, alpha)", cli=False)
    vpu_lambda: float = opt(0.03, "VPU's MixUp weight", cli=False)

    def __post_init__(self) -> None:
        absolute_paths(self, "val", loss="loss")

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("--epochs and --batch-size must be at least 1")
        if self.prior is not None and not 0.0 < self.prior < 1.0:
            raise UsageError(f"--prior must be in (0, 1), got {self.prior}")
        if not 0.0 < self.labelled_frac <= 1.0:
            raise UsageError(f"--labelled-frac must be in (0, 1], got {self.labelled_frac}")
        if not 0.0 < self.val_frac < 1.0:
            raise UsageError(f"--val-frac must be in (0, 1), got {self.val_frac}")
        check_validation_options(self.labelling, self.val, self.val_size, self.val_metric)
        if not (self.lr > 0 and self.weight_decay >= 0 and self.hidden >= 1 and self.depth >= 0 and 0 <= self.dropout < 1):
            raise UsageError("need --lr > 0, --weight-decay >= 0, --hidden >= 1, --depth >= 0 and 0 <= --dropout < 1")
        if self.fitness not in PU_FITNESS + TRUTH_FITNESS:
            raise UsageError(f"unknown fitness {self.fitness!r}; choose from {PU_FITNESS} (PU-only) or {TRUTH_FITNESS}")
        _cuda_check(self.device)


@dataclass
class DPOConfig:
    mode: str = opt("encoder", "encoder: a scalar head on a mean-pooled encoder; causal: log pi(y|x) of a causal LM; "
                    "pair: top layers over cached lower-layer states and a head reading both answers; cross: a full "
                    "cross-encoder over [prompt] [SEP] [a] [SEP] [b], every layer trained (the GPU recipe)",
                    choices=PREFERENCE_MODES)
    model: str | None = opt(None, "local Hugging Face model folder (default: a tiny built-in model)")
    loss: str = opt("dpo", "dpo|soft|robust|ipo|hinge|bt, a preference Taylor .json, or zoo:NAME")
    # None: 0.1 in causal mode (the DPO paper's), 1.0 in encoder mode, where the reference scores
    # are all 0 and beta only sets the scale of the head's output (0.1 learnt ~3x slower there).
    beta: float | None = opt(None, "default 1.0 in encoder mode, 0.1 in causal mode")
    epochs: int = opt(3, "training epochs (the best validation epoch is kept)")
    batch_size: int = opt(16, "pairs per step")
    # None: 1e-3 for the built-in tiny model (random weights), 3e-5 for a pretrained --model.
    lr: float | None = opt(None, "default 1e-3 for the built-in model, 3e-5 for --model")
    head_lr: float = opt(1e-3, "the newly initialised head's learning rate (encoder, pair and cross modes)")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    max_length: int = opt(128, "tokens per prompt+response (cross mode: prompt+both answers); longer ones are truncated")
    max_prompt_length: int = opt(48, "the prompt keeps its last tokens")
    max_pairs: int | None = opt(None, "train on a seeded sample of at most this many pairs")
    val_frac: float = opt(0.1, "share of prompts held out for validation")
    seed: int = opt(0, "split, sample, initial head and batch order")
    robust_epsilon: float = opt(0.1, "label-flip rate for --loss robust")
    grad_clip: float = opt(1.0, "gradient norm clip (0: off)", cli=False)
    eval_batch_size: int = opt(64, "pairs per scoring batch", cli=False)
    device: str = opt("cpu", "cpu or cuda", cli=False)
    # -- pair mode (trainers/pair.py) --
    top_layers: int = opt(2, "pair mode: encoder layers fine-tuned over the cached states of the layers below")
    window: int = opt(128, "pair mode: tokens per window of an answer")
    max_windows: int = opt(4, "pair mode: windows per answer (the rest is truncated and counted)")
    cache_dir: str = opt("~/.cache/lossforge/states", "pair mode: the lower-layer state cache (shared by runs)")
    cache_dtype: str = opt("float16", "pair mode: how cached states are stored", choices=("float16", "float32"))
    quantize_lower: bool = opt(True, "pair mode: dynamic int8 for the frozen lower layers (cache and serving)")
    bf16: bool = opt(True, "pair mode: bfloat16 autocast for the top layers, training and serving, on a CPU "
                           "with native bfloat16 (AVX-512 BF16 or AMX; float32 elsewhere)")
    swap: bool = opt(True, "pair mode: swap A/B of a random half of each epoch's pairs")
    cache_batch: int = opt(32, "pair mode: texts per caching step (each text is encoded alone)", cli=False)
    checkpoint_minutes: float = opt(3.0, "pair mode: a checkpoint and a progress line this often while training")

    def __post_init__(self) -> None:
        absolute_paths(self, "model", "cache_dir", loss="loss")

    def validate(self) -> None:
        if self.mode not in PREFERENCE_MODES:
            raise UsageError(f"--mode must be one of {PREFERENCE_MODES}, got {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("--epochs and --batch-size must be at least 1")
        if self.beta is not None and not self.beta > 0:
            raise UsageError(f"--beta must be positive, got {self.beta}")
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.max_prompt_length < 0 or self.max_length < self.max_prompt_length + 4:
            raise UsageError("--max-length must exceed --max-prompt-length (>= 0) by at least 4 tokens")
        if self.max_pairs is not None and self.max_pairs < 2:
            raise UsageError(f"--max-pairs must be at least 2, got {self.max_pairs}")
        if not 0.0 < self.val_frac < 1.0:
            raise UsageError(f"--val-frac must be in (0, 1), got {self.val_frac}")
        if not 0.0 <= self.robust_epsilon < 0.5:
            raise UsageError(f"--robust-epsilon must be in [0, 0.5), got {self.robust_epsilon}")
        if self.mode == "pair" and (self.top_layers < 0 or self.window < 1 or self.max_windows < 1):
            raise UsageError("--top-layers must be >= 0 and --window, --max-windows >= 1")
        _cuda_check(self.device)
        from trainers.losses.preference import resolve_preference_loss  # a loss file is read here, not in a worker

        resolve_preference_loss(self.loss)

    def check_workers(self, workers: int, flag: str = "--workers") -> None:
        """Pair mode trains on one worker: its cache is filled per process and one worker's epoch
        checkpoint is the whole state."""
        if self.mode == "pair" and workers != 1:
            raise UsageError(f"--mode pair trains on one worker ({flag} 1; give it threads with --cpus-per-worker)")

    @property
    def effective_beta(self) -> float:
        """beta, resolved."""
        return self.beta if self.beta is not None else (0.1 if self.mode == "causal" else 1.0)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.model is None else 3e-5)
