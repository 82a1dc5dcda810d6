"""Learning-rate schedules: poly, step or cosine decay, after an optional slow start (warm-up)."""
import math

from deeplab.compat import tf
from deeplab.config import TrainConfig


def learning_rate(global_step, config: TrainConfig):
  """The learning rate at `global_step` (a scalar tensor), as `config.learning_policy` says.

  poly: (base - end) * (1 - step / total) ** power + end.
  step: base * decay_factor ** floor(step / decay_step).
  cosine: base * (1 + cos(pi * t / (total - slow_start_step))) / 2, t = step - slow_start_step
    (from 0, at most total - slow_start_step): the cosine decay starts after the warm-up, as the
    original's does.
  During the first `slow_start_step` steps the rate is `slow_start_learning_rate`.
  """
  step = tf.cast(global_step, tf.float32)
  base = config.base_learning_rate
  if config.learning_policy == 'poly':
    progress = tf.minimum(step / float(max(config.training_number_of_steps, 1)), 1.0)
    rate = ((base - config.end_learning_rate) * (1.0 - progress) ** config.learning_power
            + config.end_learning_rate)
  elif config.learning_policy == 'cosine':
    decay_steps = float(max(config.training_number_of_steps - config.slow_start_step, 1))
    progress = tf.minimum(tf.maximum(step - config.slow_start_step, 0.0), decay_steps) / decay_steps
    rate = base * 0.5 * (1.0 + tf.cos(math.pi * progress))
  else:  # 'step'; the schema allows no other policy
    rate = base * config.learning_rate_decay_factor ** tf.floor(
        step / float(config.learning_rate_decay_step))
  if config.slow_start_step:
    rate = tf.where(step < config.slow_start_step,
                    tf.constant(config.slow_start_learning_rate, tf.float32), rate)
  return rate
