"""Training: state, steps, loop."""

from adapters_jax.train.step import (
    TrainState,
    classification_loss,
    create_train_state,
    regression_loss,
    train_step,
)

__all__ = ['TrainState', 'classification_loss', 'create_train_state', 'regression_loss',
           'train_step']
