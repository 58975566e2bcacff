"""The one error type for bad data: it always names the file and, for an annotation, its id."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class DatasetError(ValueError):
    """A defect in a dataset file, reported as ``FILE[: annotation ID]: PROBLEM``.

    Raised instead of a bare traceback wherever an image, annotation file or panoptic PNG is
    unusable, so that a user knows which file to open and what to fix.
    """

    def __init__(self, path: Union[str, Path], problem: str, annotation_id: Optional[int] = None):
        self.path = str(path)
        self.problem = problem
        self.annotation_id = annotation_id
        where = self.path if annotation_id is None else f"{self.path}: annotation {annotation_id}"
        super().__init__(f"{where}: {problem}")
