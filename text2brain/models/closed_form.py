"""`ClosedFormModule`: heads fitted in closed form (the baselines), run by the same Trainer.

A closed-form head has no optimizer: it is fitted once from the whole training split when the
fit starts, and `text2brain fit` then runs a single training batch that does nothing
but end the fit, so that validation runs, the shared metrics are logged under the usual names
and the checkpoint callbacks write `best.ckpt` exactly as for a head trained by gradient. That
batch counts as the run's one optimizer step (global_step 1): Lightning's ModelCheckpoint
never saves at step 0.

What a fit produces lives in buffers; those whose shape depends on the fit (a vocabulary's
size, a number of studies) are named in `fitted_buffers` and are re-created with the shapes
stored in a checkpoint before it is loaded, so a fitted head loads with strict
`load_state_dict`, from `torch.load(weights_only=True)`, like every other head.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from text2brain.models.base import BrainMapModule
from text2brain.models.head import match_buffer_shapes

log = logging.getLogger(__name__)


class ClosedFormModule(BrainMapModule):
    """Base of the heads fitted in closed form; subclasses implement `fit_closed_form`.

    When it is fitted: on `Trainer.fit` (unless it resumes from a checkpoint), and on
    `validate` / `test` / `predict` of a head that is not fitted yet and gets no checkpoint
    (so `text2brain test -c configs/<baseline>.yaml` works without a fit step). A head loaded
    from a checkpoint is fitted already.
    """

    trains_by_gradient = False
    #: What the one-batch run of a closed-form fit needs from the shared trainer config.
    trainer_arguments: ClassVar[dict[str, Any]] = {
        "precision": "32-true",  # float32 fit and metrics: autocast would round the maps
        "gradient_clip_val": None,  # no optimizer: nothing to clip (Lightning refuses to)
        "max_epochs": 1,  # the fit happens at fit start; one epoch of one batch only ends it,
        "limit_train_batches": 1,  # then validation runs and best.ckpt is written
        "num_sanity_val_steps": 0,  # one validation, after that batch: no sanity pass
        "log_every_n_steps": 1,  # the run has one step
    }
    #: Callbacks that serve gradient training only: the learning-rate monitor (it refuses to run
    #: without an optimizer) and the resume checkpoint (last.ckpt, no monitor: a one-step run
    #: has nothing to resume, and it would write the fitted head a second time).
    dropped_callbacks: ClassVar[dict[str, dict[str, Any]]] = {
        "LearningRateMonitor": {},
        "ModelCheckpoint": {"save_last": True, "monitor": None},
    }
    #: Buffers whose shape depends on the fit (re-created from a checkpoint's shapes on load).
    fitted_buffers: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.is_fitted = False
        # Lightning's automatic loop counts a step per batch even without an optimizer.
        self.automatic_optimization = False

    def fit_closed_form(self, datamodule: Any) -> None:
        """Fit from the data module's training split (a `TextMapDataModule`, set up)."""
        raise NotImplementedError

    # Fitted in the *_start hooks, not in `setup`: Lightning restores a checkpoint after
    # `setup`, so only then is it known whether the head comes from one (a `test --ckpt_path`
    # would otherwise refit the head, a minute for NeuroQuery, before loading it).
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.trainer.ckpt_path is None:  # resuming keeps the checkpoint's fit
            self.fit_now()

    def on_validation_start(self) -> None:
        super().on_validation_start()
        if not self.is_fitted:
            self.fit_now()

    def on_test_start(self) -> None:
        super().on_test_start()
        if not self.is_fitted:
            self.fit_now()

    def on_predict_start(self) -> None:
        super().on_predict_start()
        if not self.is_fitted:
            self.fit_now()

    def fit_now(self) -> None:
        """Fit from the trainer's data module (the `fit_closed_form` of the head)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError(
                f"{type(self).__name__} is fitted from a TextMapDataModule: pass "
                "datamodule=... to the Trainer call"
            )
        log.info("fitting %s in closed form on the training split", type(self).__name__)
        self.fit_closed_form(datamodule)
        self.is_fitted = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        match_buffer_shapes(self, checkpoint.get("state_dict", {}), self.fitted_buffers)
        self.is_fitted = True

    def configure_optimizers(self) -> None:
        """No optimizer: the fit is done before training starts."""
        return None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """End the fit at the first batch (validation still runs, then checkpoints)."""
        self.optimizers().step()  # Lightning's stand-in optimizer: counts the step
        self.trainer.should_stop = True
