"""The model layer: the detectors and their parts, one module per paper concept.

Nothing here reads files or imports the data, training or evaluation layers.
"""
