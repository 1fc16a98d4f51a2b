"""The ROS-free core: image in, :class:`~.results.SegmentationResult` out. Imports neither rclpy nor a bag library.

One module per stage, in the order a frame passes through them:

==================  ==============================================================================================
``config``          every setting, declared once as data; parameter files
``model``           the model side, a package of its own: backends (open_clip, toy), dense CLIP methods and
                    sliding windows, runtimes (eager, compiled, ONNX), export and fine-tuned adapters
``vocabulary``      prompt ensembles, text-embedding caches, the live vocabulary and the naming dictionary
``unknown``         class statistics, uncertainty, unknown regions
``naming``          a name for each unknown region
``pipeline``        :class:`Clipomaly`: the stages above, then the extended segmentation
``results``         typed results; ``overlay`` draws them; ``images`` checks and reads images; ``scenes`` draws
                    synthetic street scenes and drives
==================  ==============================================================================================
"""
