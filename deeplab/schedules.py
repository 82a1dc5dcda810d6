"""Learning-rate schedules: poly or step decay, after an optional slow start (warm-up)."""
from deeplab.compat import tf


def learning_rate(global_step, policy, base_learning_rate, training_number_of_steps,
                  learning_power=0.9, end_learning_rate=0.0, decay_step=2000, decay_factor=0.1,
                  slow_start_step=0, slow_start_learning_rate=1e-4):
  """The learning rate at `global_step` (a scalar tensor).

  poly: (base - end) * (1 - step / total) ** power + end.
  step: base * decay_factor ** floor(step / decay_step).
  During the first `slow_start_step` steps the rate is `slow_start_learning_rate`.
  """
  step = tf.cast(global_step, tf.float32)
  if policy == 'poly':
    progress = tf.minimum(step / float(max(training_number_of_steps, 1)), 1.0)
    rate = (base_learning_rate - end_learning_rate) * (1.0 - progress) ** learning_power + end_learning_rate
  elif policy == 'step':
    rate = base_learning_rate * decay_factor ** tf.floor(step / float(decay_step))
  else:
    raise ValueError(f'unknown learning policy {policy!r}')
  if slow_start_step:
    rate = tf.where(step < slow_start_step, tf.constant(slow_start_learning_rate, tf.float32), rate)
  return rate
