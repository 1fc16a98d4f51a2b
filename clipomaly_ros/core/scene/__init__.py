"""The scene around the camera, over frames: what a planner needs from the per-frame results. Imports the method's
results and the settings, never the pipeline's stages.

==================  ==============================================================================================
``tracking``        :class:`AnomalyTracker`: identities over frames, by overlap and the meaning of names
``geometry``        camera model, mounting, ground placement and the 3D box an estimate stands for
``frames``          a tf-like tree of rigid transforms
``planning``        :class:`AnomalyFollower`: the per-camera step after the pipeline (place, track, filter)
==================  ==============================================================================================
"""
