"""Evaluation: predictions on a dataset, COCO AP, panoptic quality, Table 1 and the files they write."""
