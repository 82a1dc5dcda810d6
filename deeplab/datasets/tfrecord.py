"""The TFRecord example format of the original DeepLab builders (build_voc2012_data.py et al.).

Feature keys are facts of that format; our shards and theirs are interchangeable. The image and the
label map are stored encoded (the image as its original file bytes, the label as a single-channel
PNG of class ids).
"""

IMAGE_ENCODED = 'image/encoded'
IMAGE_FILENAME = 'image/filename'
IMAGE_FORMAT = 'image/format'
IMAGE_HEIGHT = 'image/height'
IMAGE_WIDTH = 'image/width'
IMAGE_CHANNELS = 'image/channels'
LABEL_ENCODED = 'image/segmentation/class/encoded'
LABEL_FORMAT = 'image/segmentation/class/format'
