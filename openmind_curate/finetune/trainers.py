"""nnU-Net v2 trainers for the paper's five fine-tuning schedules.

One class per schedule (`SCHEDULE_TRAINERS`); everything else - epochs, the
stage length W, the learning rate, iterations per epoch, the checkpoint to
load - comes from the plans' ``openmind_finetune`` entry (`Settings`), so a
1000-epoch run is a setting, never a class. nnU-Net does the rest: its
preprocessed data, data loading and augmentation, Dice + CE loss, SGD with
Nesterov momentum 0.99, gradient clipping at 12, checkpoints
(``checkpoint_latest`` every ``save_every`` epochs, ``checkpoint_best``,
``checkpoint_final``), sliding-window validation with Gaussian weighting and
test-time mirroring, and ``summary.json``. Deep supervision is off, as in the
authors' trainers.

The learning rate and the optimizer's lifetime follow `schedules` (the
authors' ``PretrainedTrainer``/``PretrainedTrainer_sawtooth``: a fresh SGD
where a stage says so, the previous one kept otherwise). Two deliberate
departures from the authors' code, both documented in the user guide:

- **A decoder-only stage freezes the encoder**, as the paper says: the
  optimizer holds only the decoder's own parameters, and the encoder's have
  ``requires_grad = False``. The authors' code builds that optimizer over
  ``network.decoder.parameters()``, which for dynamic-network-architectures'
  ``UNetDecoder`` includes the encoder it keeps a reference to - so their
  "decoder-only" stages train every parameter. ``reference_param_groups``
  (``--reference-param-groups``) reproduces that exactly.
- **A continued run keeps its stage.** The reference's ``get_stage()`` never
  returns the whole-network warm-up when the two stage lengths are equal, so a
  Sawtooth run continued between epochs W and 2W trains at the peak rate
  instead of the ramp. Here the optimizer of a continued run is rebuilt for
  the stage its saved state belongs to, and the learning rate is always
  `schedules.lr_at` of the epoch.

When the data has more channels than the pre-training, the repeated input
projection (`weights`) is trained in decoder-only stages too (the authors'
rule: it is no longer the pre-trained kernel).

**Primus** (the transformer) is built from the plans' architecture entry
(dna's ``Primus`` at the fine-tuning patch; nnU-Net's builder would pass it a
``deep_supervision`` it does not take). Its optimizer is the authors'
``PretrainedTrainer_Primus``: AdamW, weight decay 5e-2, betas (0.9, 0.98),
gradients clipped at norm 1 (`Settings.optimizer`, `grad_clip`; run.py sets
them by the network's family). Its encoder is ``down_projection`` + ``eva``,
its decoder ``up_projection``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from openmind_curate.finetune import schedules, weights
from openmind_curate.train.models import unwrap
from openmind_curate.train.nnssl import is_primus, read_pretrained

#: The plans entry that carries `Settings`.
PLANS_KEY = "openmind_finetune"
MOMENTUM = 0.99
#: AdamW's betas for Primus (the fork's PretrainedTrainer_Primus, nnssl's pre-training).
ADAMW_BETAS = (0.9, 0.98)
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class Settings:
    """One fine-tuning run's configuration, carried in the plans (plain types)."""

    schedule: str = "sawtooth"
    epochs: int = 150
    stage_len: int | None = None  # schedules.stage_length(epochs) when None
    lr: float = 1e-3
    weight_decay: float = 3e-5
    iters_per_epoch: int = 250
    val_iters_per_epoch: int = 50
    save_every: int = 50
    pretrained: str | None = None  # a checkpoint in either layout; None: from scratch
    reference_param_groups: bool = False
    test_time_mirroring: bool = True
    optimizer: str = "sgd"  # "sgd" (Nesterov 0.99) | "adamw" (Primus)
    grad_clip: float = 12.0  # nnU-Net's; the fork's Primus trainer: 1

    @property
    def w(self) -> int:
        return self.stage_len or schedules.stage_length(self.epochs)

    def to_plans(self, plans: dict) -> dict:
        """`plans` with these settings added."""
        return {**plans, PLANS_KEY: asdict(self)}

    @classmethod
    def from_plans(cls, plans: dict) -> Settings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in plans.get(PLANS_KEY, {}).items() if k in known})


class ScheduledTrainer(nnUNetTrainer):
    """nnU-Net's trainer with a schedule of stages (see the module doc)."""

    schedule = "default"

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's signature
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.settings = Settings.from_plans(self.plans_manager.plans)
        s = self.settings
        schedules.check(self.schedule, s.epochs, s.w)
        if s.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {s.optimizer!r}: one of {OPTIMIZERS}")
        self.num_epochs, self.initial_lr, self.weight_decay = s.epochs, s.lr, s.weight_decay
        self.num_iterations_per_epoch = s.iters_per_epoch
        self.num_val_iterations_per_epoch = s.val_iters_per_epoch
        self.save_every = s.save_every
        self.enable_deep_supervision = False
        self.stage: schedules.Stage | None = None
        self.loaded: weights.Loaded | None = None
        self.echo: Callable[[str], None] | None = None  # one line per epoch, set by the caller

    # ------------------------------------------------------------- weights

    def initialize(self) -> None:
        super().initialize()
        if self.settings.pretrained:
            pretrained = read_pretrained(self.settings.pretrained)
            self.loaded = weights.load_encoder(
                unwrap(self.network),
                pretrained,
                self.num_input_channels,
                patch=self.configuration_manager.patch_size,
            )
            resized = self.loaded.resized_pos_embed
            self.print_to_log_file(
                f"Loaded {self.loaded.tensors} encoder tensors from {pretrained.path} "
                f"({pretrained.layout} layout, {pretrained.arch})"
                + (
                    f"; positional embedding resized {resized[0]} -> {resized[1]}"
                    if resized
                    else ""
                )
            )
            if self.loaded.repeated_stem:  # the input projection joins the trained set
                self.optimizer = self._optimizer_for(self.stage)

    @staticmethod
    def build_network_architecture(
        plans_manager,
        configuration_manager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        """nnU-Net's builder; a Primus gets no ``deep_supervision`` argument.
        (nnU-Net's predictor calls this too.)"""
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        name = configuration_manager.network_arch_class_name
        primus = is_primus({"network_class_name": name})
        return get_network_from_plans(
            name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels,
            num_output_channels,
            allow_init=True,
            deep_supervision=None if primus else enable_deep_supervision,
        )

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Deep supervision stays off (the authors' trainers)."""

    # ------------------------------------------------------------- stages

    def stage_at(self, epoch: int) -> schedules.Stage:
        epoch = min(max(epoch, 0), self.num_epochs - 1)
        return schedules.stage_at(self.schedule, epoch, self.num_epochs, self.settings.w)

    def trained_parameters(self, stage: schedules.Stage) -> list[nn.Parameter]:
        """The parameters `stage` trains (see the module doc)."""
        net = unwrap(self.network)
        reference = self.settings.reference_param_groups and hasattr(net, "decoder")
        if not stage.decoder_only or reference:
            # the reference's "decoder" parameters include the encoder (UNetDecoder.encoder)
            chosen = list(net.decoder.parameters() if stage.decoder_only else net.parameters())
        else:  # a Primus has no `decoder` attribute: its decoder is up_projection
            encoder = {id(p) for p in weights.encoder_parameters(net)}
            chosen = [p for p in net.parameters() if id(p) not in encoder]
            if self.loaded is not None and self.loaded.repeated_stem:
                chosen += list(weights.in_proj_module(net).parameters())
        unique = {id(p): p for p in chosen}
        return list(unique.values())

    def _optimizer_for(self, stage: schedules.Stage) -> torch.optim.Optimizer:
        """A fresh optimizer over what `stage` trains; the rest stops taking gradients."""
        params = self.trained_parameters(stage)
        self._set_trainable(params)
        self.stage = stage
        if self.settings.optimizer == "adamw":
            return torch.optim.AdamW(
                params, self.initial_lr, weight_decay=self.weight_decay, betas=ADAMW_BETAS
            )
        return torch.optim.SGD(
            params,
            self.initial_lr,
            weight_decay=self.weight_decay,
            momentum=MOMENTUM,
            nesterov=True,
        )

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step, with the gradient clipped at `Settings.grad_clip`."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        on_cuda = self.device.type == "cuda"
        with torch.autocast(self.device.type, enabled=True) if on_cuda else nullcontext():
            loss = self.loss(self.network(data), target)
        clip = self.settings.grad_clip
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    def _set_trainable(self, params: list[nn.Parameter]) -> None:
        trained = {id(p) for p in params}
        changed = False
        for p in unwrap(self.network).parameters():
            changed |= p.requires_grad != (id(p) in trained)
            p.requires_grad_(id(p) in trained)
        ddp = torch.nn.parallel.DistributedDataParallel
        if changed and isinstance(self.network, ddp):  # DDP registers the trainable set
            self.network = ddp(unwrap(self.network), device_ids=[self.local_rank])

    def configure_optimizers(self):
        """The optimizer of the stage of the current epoch; no scheduler object:
        `on_train_epoch_start` sets the rate from the closed form."""
        return self._optimizer_for(self.stage_at(self.current_epoch)), None

    def on_train_epoch_start(self) -> None:
        stage = self.stage_at(self.current_epoch)
        if stage != self.stage:  # a stage starts here
            if stage.fresh_optimizer:
                self.optimizer = self._optimizer_for(stage)
            else:  # the previous stage's optimizer (and momentum) goes on
                self.stage = stage
        lr = schedules.lr_at(
            self.schedule, self.current_epoch, self.num_epochs, self.settings.w, self.initial_lr
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.network.train()
        self.print_to_log_file(f"Epoch {self.current_epoch}: {stage.name}, lr {lr:.6g}")
        self.logger.log("lrs", lr, self.current_epoch)

    def load_checkpoint(self, filename_or_checkpoint: str | dict) -> None:
        """nnU-Net's, after rebuilding the optimizer of the stage the saved
        optimizer state belongs to (the epoch before the checkpoint's)."""
        if not self.was_initialized:
            self.initialize()
        if isinstance(filename_or_checkpoint, dict):
            next_epoch = int(filename_or_checkpoint["current_epoch"])
        else:
            peek = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
            next_epoch = int(peek["current_epoch"])
            del peek
        self.optimizer = self._optimizer_for(self.stage_at(next_epoch - 1))
        super().load_checkpoint(filename_or_checkpoint)

    # ------------------------------------------------------------- output

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # noqa: N802
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.settings.test_time_mirroring:
            self.inference_allowed_mirroring_axes = None
        return out

    def print_to_log_file(self, *args, also_print_to_console=True, add_timestamp=True):
        """Into nnU-Net's log file only: the console gets `echo`'s lines."""
        super().print_to_log_file(*args, also_print_to_console=False, add_timestamp=add_timestamp)

    def on_epoch_end(self) -> None:
        epoch = self.current_epoch
        super().on_epoch_end()
        if self.echo is not None and self.local_rank == 0:
            self.echo(self.epoch_line(epoch))

    def epoch_line(self, epoch: int) -> str:
        def value(key: str) -> float:
            return float(np.mean(self.logger.get_value(key, step=epoch)))

        dice = " ".join(
            f"{d:.3f}" for d in self.logger.get_value("dice_per_class_or_region", step=epoch)
        )
        stage = self.stage.name if self.stage else "-"
        lr = self.optimizer.param_groups[0]["lr"]
        return (
            f"epoch {epoch + 1}/{self.num_epochs} ({stage}): lr {lr:.3g}, "
            f"train loss {value('train_losses'):.4f}, val loss {value('val_losses'):.4f}, "
            f"pseudo Dice {dice}"
        )


class DefaultTrainer(ScheduledTrainer):
    """PolyLR over the whole network (nnU-Net's default)."""

    schedule = "default"


class FrozenTrainer(ScheduledTrainer):
    """PolyLR over the decoder only; the encoder stays frozen."""

    schedule = "frozen"


class WarmUpTrainer(ScheduledTrainer):
    """A linear warm-up of the whole network, then PolyLR (authors' PretrainedTrainer)."""

    schedule = "warmup"


class ValleyTrainer(ScheduledTrainer):
    """The decoder at a falling rate, a whole-network warm-up, then PolyLR."""

    schedule = "valley"


class SawtoothTrainer(ScheduledTrainer):
    """Decoder warm-up and decay, a whole-network warm-up, then PolyLR
    (authors' PretrainedTrainer_sawtooth)."""

    schedule = "sawtooth"


SCHEDULE_TRAINERS: dict[str, type[ScheduledTrainer]] = {
    cls.schedule: cls
    for cls in (DefaultTrainer, FrozenTrainer, WarmUpTrainer, ValleyTrainer, SawtoothTrainer)
}
