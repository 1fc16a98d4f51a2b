"""The ROS-free core: image in, :class:`~.method.results.SegmentationResult` out. Imports neither rclpy nor a bag
library.

Three rooms by kind, imports flowing one way (``model`` <- ``method`` <- ``scene``), on top of a few helpers:

==================  ==============================================================================================
``model``           the model side: backends (open_clip, toy), dense CLIP methods and sliding windows, runtimes
                    (eager, compiled, ONNX), export and fine-tuned adapters
``method``          the per-frame method: vocabulary, unknown regions, naming, extension, the pipeline
                    (:class:`Clipomaly`) and its typed results
``scene``           over frames and around the camera: tracking, ground geometry, transforms, the planner's step
``config``          helpers: every setting declared once as data, with parameter files; ``fingerprint`` what a
                    result depends on; ``images`` checks and reads images; ``interrupt`` stops long commands
                    cleanly; ``datasets`` reads labelled image folders
==================  ==============================================================================================

The synthetic street scenes of the tests and the demo are not runtime code: :mod:`clipomaly_ros.tools.scenes`.
"""
