"""The conventions the data layer and the model layer share, in one place, so that neither has
to import the other: the label of pixels that semantic targets leave out."""

IGNORE = 255  # semantic label of void / unlabelled pixels: no loss, not counted by mIoU or PQ
