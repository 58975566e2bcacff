"""Training: ``solver`` (optimizer, learning rate), ``sampling`` (the data stream), ``engine``
(the loop and its run folder), ``checkpoint`` (save, resume, load a model) and ``distributed``
(multi-process training under ``torchrun``)."""
