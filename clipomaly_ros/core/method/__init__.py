"""The per-frame method: one image in, one :class:`~.results.SegmentationResult` out. Imports the model room and
the core's helpers (settings, images), never the scene.

==================  ==============================================================================================
``vocabulary``      prompt ensembles, text-embedding caches, the live vocabulary and the naming dictionary
``unknown``         class statistics, uncertainty, unknown regions
``naming``          a name for each unknown region
``extension``       the segmentation again over known + new names: anomaly instances
``pamr``            pixel-adaptive refinement of the class scores
``maps``            the full-resolution maps, computed only when an output asks for them
``results``         typed results: ``AnomalyRecord``, ``GroundEstimate``, ``SegmentationResult``
``pipeline``        :class:`Clipomaly`: the stages above in order
``overlay``         pictures of a result for people
==================  ==============================================================================================
"""
