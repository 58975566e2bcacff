"""Evaluation: predictions on a dataset, COCO AP, panoptic quality, Table 1 and the files they write.

One module per job, in the order the data flows:

- ``inference``        the test-time path: resize, run the model, map back, fuse panoptic
- ``coco``             COCO's results format and AP through pycocotools
- ``boundary``         boundary IoU and boundary AP (Cheng et al., 2021) on pycocotools' matching
- ``hard_cases``       AP over the objects of one hard case, the others ignored
- ``panoptic_quality`` PQ, SQ, RQ and mIoU (the metric itself, no files)
- ``panoptic_files``   panoptic predictions as COCO panoptic PNGs and JSON, scored
- ``metrics``          ``metrics.json``, merged by every evaluation
- ``tables``           the AP table and the paper's Table 1, in text and Markdown
- ``evaluate``         ``evaluate_coco``: all of the above for one model and dataset
- ``report``           the demo's ``report.md`` with its pictures
- ``comparison``       BlendMask against Mask R-CNN: Figure 1's images, speed, ``compare``'s report
"""
