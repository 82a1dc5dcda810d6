"""Backbones (one network per module) and the batch norm they share."""
