"""Learning-rate schedules: poly or step decay, after an optional slow start (warm-up)."""
from deeplab.compat import tf
from deeplab.config import TrainConfig


def learning_rate(global_step, config: TrainConfig):
  """The learning rate at `global_step` (a scalar tensor), as `config.learning_policy` says.

  poly: (base - end) * (1 - step / total) ** power + end.
  step: base * decay_factor ** floor(step / decay_step).
  During the first `slow_start_step` steps the rate is `slow_start_learning_rate`.
  """
  step = tf.cast(global_step, tf.float32)
  base = config.base_learning_rate
  if config.learning_policy == 'poly':
    progress = tf.minimum(step / float(max(config.training_number_of_steps, 1)), 1.0)
    rate = ((base - config.end_learning_rate) * (1.0 - progress) ** config.learning_power
            + config.end_learning_rate)
  else:  # 'step'; the schema allows no other policy
    rate = base * config.learning_rate_decay_factor ** tf.floor(
        step / float(config.learning_rate_decay_step))
  if config.slow_start_step:
    rate = tf.where(step < config.slow_start_step,
                    tf.constant(config.slow_start_learning_rate, tf.float32), rate)
  return rate
