"""The objective interface: what an objective needs and the loss of one training step.

An objective says which classes the learner trains on (``train_classnames``), whether it needs
the frozen teacher and with which prompts (``uses_teacher``, ``teacher_prompts``), and computes
the loss of a step from the learner and the batch (``training_loss``), with what it logs. The
LightningModule is the same for every objective; it only hands over a :class:`TrainingStep`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

from torch import Tensor

from clipcore.config import ConfigError


@dataclass
class TrainingStep:
    """What the module hands an objective for one step.

    ``teacher_logits(images, classes=None)`` scores images against the teacher prompts (all, or
    the indexed ones) with the logit scale the objective asked for; ``mean_over_ranks(t)``
    averages a tensor over the DDP ranks (identity on one process).
    """

    learner: Any
    images: Tensor
    labels: Tensor
    teacher_logits: Optional[Callable[[Tensor], Tensor]] = None
    mean_over_ranks: Callable[[Tensor], Tensor] = lambda t: t


@dataclass
class FitContext:
    """What an objective may use once, before training starts (:meth:`Objective.prepare_fit`).

    ``load_encoder(spec)`` builds a frozen model from ``"student"``, ``"teacher"`` (the run's
    sections) or a model section mapping; ``input_view(encoder, preprocess)`` returns the module
    that turns a batch of the data's input into that model's (None: the same batch).
    """

    student: Any
    datamodule: Any               # its splits may be replaced: the loaders are built afterwards
    device: Any
    run_dir: Optional[Path]
    is_main_process: bool
    num_shots: Optional[int]      # data.num_shots
    load_encoder: Callable[[Any], Any]
    input_view: Callable[[Any, str], Optional[Callable]]
    log_metrics: Callable[[dict], None] = lambda metrics: None
    # (export folder, class names) -> a frozen prompt learner trained by this framework
    load_prompt_teacher: Callable[[Any, list], Any] = None


@dataclass
class ObjectiveResult:
    output: Any                   # the learner's PromptOutput (its regularisation reads it)
    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class Objective:
    """Base class; subclasses register with ``@register_objective(name, config=...)``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    uses_teacher: ClassVar[bool] = False
    # False: the objective picks its own training images from the whole train split
    # (UPL), so data.num_shots does not sample it beforehand.
    samples_training_shots: ClassVar[bool] = True
    # False: the batch labels are not the true labels (UPL's pseudo-labels), so the module's
    # train/acc would not be an accuracy and is not logged.
    batch_labels_are_true: ClassVar[bool] = True
    # False: the learner's own regularisation (PromptSRC's L_SCL) and prompt aggregation are
    # not used (PromptKD's student is trained by the distillation loss alone).
    keeps_learner_regularization: ClassVar[bool] = True
    # Learned tensors of the objective itself (PromptKD's projector), registered by the module
    # as ``objective_head`` once built (``setup_fit`` or ``restore_head``).
    head: Optional[Any] = None

    def __init__(self, settings: Any, classnames: list[str], dataset_template: str):
        """``settings``: the ``objective`` config section; ``classnames``: the dataset's classes;
        ``dataset_template``: its prompt template (e.g. the teacher's)."""
        if not isinstance(settings, self.config_class):
            settings = self.config_class(**{k: v for k, v in dict(settings).items()})
        self.settings = settings
        self.classnames = list(classnames)
        self.dataset_template = dataset_template

    def train_classnames(self) -> list[str]:
        """The classes the learner is trained on (default: the dataset's)."""
        return self.classnames

    def teacher_prompts(self) -> Optional[list[str]]:
        """Prompts of the teacher's classes (None: no teacher)."""
        return None

    def setup_fit(self, context: FitContext) -> None:
        """Called once per fit before the optimiser is built, with the module still on the CPU."""

    def prepare_fit(self, context: FitContext) -> None:
        """Called once per fit (and per resumed fit), on the device, before the training loader is built."""

    def restore_head(self, state: dict, extra: dict) -> None:
        """Build ``head`` to load a checkpoint's or export's tensors ``state`` into (objectives
        with a head); ``extra``: what :meth:`extra_state` stored."""

    def extra_state(self) -> dict:
        """JSON-able state stored in checkpoints and exports beside the tensors."""
        return {}

    def eval_logits(self, learner, images: Tensor, classnames: list[str]) -> Tensor:
        """Logits of ``images`` over ``classnames`` (the learner's active class list) at evaluation."""
        return learner(images).logits

    @property
    def teacher_logit_scale(self) -> str:
        return getattr(self.settings, "teacher_logit_scale", "student")

    def training_loss(self, step: TrainingStep) -> ObjectiveResult:
        raise NotImplementedError


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    return value
