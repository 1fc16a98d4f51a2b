"""Reviewing what mining found: the decisions file (``reviews.jsonl``), the review page's server, and the labelling
tools' formats (COCO, Label Studio, CVAT, FiftyOne) both ways. ROS-free except where a full frame is read back from
its bag (:mod:`.frames`)."""
