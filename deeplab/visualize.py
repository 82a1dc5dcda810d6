"""Blend colour-mapped label maps over images and save label maps (numpy + PIL)."""
import numpy as np
from PIL import Image

from deeplab.colormaps import colorize


def overlay(image, labels, colormap, alpha=0.5):
  """The image with its colour-mapped labels blended on top at opacity `alpha`; uint8 [H, W, 3]."""
  blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(labels, colormap)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def save_label_png(labels, path):
  """Class ids as a single-channel PNG (8-bit up to 256 classes, else 16-bit)."""
  array = np.asarray(labels)
  if array.max(initial=0) < 256:
    Image.fromarray(array.astype(np.uint8), mode='L').save(path)
  else:
    Image.fromarray(array.astype(np.uint16)).save(path)
