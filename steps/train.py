"""train: tfrecords (+ optional checkpoint to resume / initial checkpoint) -> checkpoint.tar.gz."""
from steps.flags import FLAG, FLOAT, INTEGER, STRING, Parameter, Path, StepSpec
from steps.model_flags import MODEL_PARAMETERS

SPEC = StepSpec(
    name='train',
    description='Train a DeepLab model on TFRecords; resumable, prints a JSON metric line per log step.',
    inputs=(
        Path('tfrecords', 'TFRecords from build_data (or a folder of original DeepLab shards + --dataset)'),
        Path('checkpoint', 'a checkpoint.tar.gz of an earlier run to resume from', optional=True),
        Path('tf_initial_checkpoint', 'a checkpoint (TF prefix, folder or archive) to initialise the '
             'weights from, e.g. a model-zoo checkpoint', optional=True),
    ),
    outputs=(Path('output', 'the trained checkpoint + model.json + TensorBoard events',
                  filename='checkpoint.tar.gz'),),
    parameters=MODEL_PARAMETERS + (
        Parameter('dataset', STRING, '', 'the dataset name, needed only for TFRecords without dataset.json'),
        Parameter('train_split', STRING, 'train', 'the split to train on'),
        Parameter('training_number_of_steps', INTEGER, 30000, 'total training steps (a resumed run '
                  'continues to this total); 0 with tf_initial_checkpoint packages that checkpoint', min=0),
        Parameter('train_batch_size', INTEGER, 8, 'images per step', min=1),
        Parameter('train_crop_size', INTEGER, (513, 513), 'crop height,width', multiple=True, min=1),
        Parameter('base_learning_rate', FLOAT, 0.0001, 'initial learning rate', min=0),
        Parameter('learning_policy', STRING, 'poly', 'learning rate schedule', choices=('poly', 'step')),
        Parameter('learning_power', FLOAT, 0.9, 'poly: power'),
        Parameter('end_learning_rate', FLOAT, 0.0, 'poly: final learning rate', min=0),
        Parameter('learning_rate_decay_step', INTEGER, 2000, 'step: decay every this many steps', min=1),
        Parameter('learning_rate_decay_factor', FLOAT, 0.1, 'step: decay factor', min=0),
        Parameter('slow_start_step', INTEGER, 0, 'warm-up steps at slow_start_learning_rate', min=0),
        Parameter('slow_start_learning_rate', FLOAT, 0.0001, 'learning rate during warm-up', min=0),
        Parameter('momentum', FLOAT, 0.9, 'momentum of the optimizer', min=0),
        Parameter('weight_decay', FLOAT, 0.00004, 'L2 weight decay', min=0),
        Parameter('fine_tune_batch_norm', FLAG, True, 'update batch norm statistics and parameters '
                  '(needs a batch of about 12 or more)'),
        Parameter('min_scale_factor', FLOAT, 0.5, 'random scale augmentation: smallest factor', min=0.01),
        Parameter('max_scale_factor', FLOAT, 2.0, 'random scale augmentation: largest factor', min=0.01),
        Parameter('scale_factor_step_size', FLOAT, 0.25, 'random scale: step between factors (0 = any)',
                  min=0),
        Parameter('initialize_last_layer', FLAG, True, 'restore the logits layer from tf_initial_checkpoint '
                  '(false when the class count differs)'),
        Parameter('last_layers_contain_logits_only', FLAG, False, 'with initialize_last_layer=false: '
                  'only logits are new (else the ASPP/decoder layers are new too)'),
        Parameter('log_steps', INTEGER, 10, 'print a metric line every this many steps', min=1),
        Parameter('save_interval_steps', INTEGER, 1000, 'save a checkpoint every this many steps', min=1),
        Parameter('seed', INTEGER, 0, 'random seed of initialisation and augmentation'),
    ),
)
