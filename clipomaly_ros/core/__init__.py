"""The ROS-free core: image in, :class:`~.results.SegmentationResult` out. Imports neither rclpy nor a bag library.

One module per stage, in the order a frame passes through them:

==================  ==============================================================================================
``config``          every setting, declared once as data; parameter files
``backend``         what the pipeline asks of a vision-language model (``factory`` builds one)
``open_clip_backend``  real CLIP from open_clip; ``toy_backend``: a deterministic colour model for tests and demos
``dense``           training-free dense CLIP features over sliding windows
``vocabulary``      prompt ensembles, text-embedding caches, the live vocabulary and the naming dictionary
``unknown``         class statistics, uncertainty, unknown regions
``naming``          a name for each unknown region
``pipeline``        :class:`Clipomaly`: the stages above, then the extended segmentation
``results``         typed results; ``overlay`` draws them; ``images`` checks and reads images; ``scenes`` draws
                    synthetic street scenes and drives
==================  ==============================================================================================
"""
