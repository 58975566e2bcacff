"""Data: the synthetic shapes dataset, COCO datasets, transforms, checks and statistics.

Introduced in ``notebooks/00_data.ipynb``.
"""
