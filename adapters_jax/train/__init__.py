"""Training: task kinds, state, steps, the one loop."""

from adapters_jax.train.step import (
    TrainState,
    classification_loss,
    create_train_state,
    regression_loss,
    train_step,
)
from adapters_jax.train.tasks import Classification, Regression, TaskKind, task_kind_for

__all__ = ['Classification', 'Regression', 'TaskKind', 'TrainState', 'classification_loss',
           'create_train_state', 'regression_loss', 'task_kind_for', 'train_step']
