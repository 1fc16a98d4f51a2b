"""``clipomaly bench``: what each stage costs on this machine, in one run on the same frames.

Random weights by default: the cost of a forward pass does not depend on the weights' values. Reported:

- the median milliseconds of every pipeline stage, the time spent inside the vision transformer (``backbone``:
  patch embedding, blocks, projection, for the dense pass and the naming crops), and the host's share of a frame
  outside it (``total - backbone``);
- the node's conversion and publish cost per frame with only ``anomalies`` subscribed and with every image output
  subscribed (real rclpy publishers when ROS 2 is installed, else message building and CDR serialisation);
- end-to-end frames per second for 1 camera and for ``cameras`` cameras batched through one model;
- the planner step per frame (ground placement and tracking of the frame's anomalies), and the tracker alone
  with ``max_regions`` anomalies a frame;
- per window layout (official, light): windows, tokens and GFLOP per frame, and a Jetson AGX Orin estimate from them;
- opt-in, as they take long: distance and lateral errors of the ground estimates at 5 to 40 m, on perspective street
  scenes segmented by the toy backend (``geometry``); resident memory after the first and the last frame of a long
  run with a small model (``soak_frames``); ``cameras`` cameras batched through one model.

It says at the start how long it will take, from the first frame's time.

Its rooms: ``runner`` (one run, start to report), ``timing`` (the timed parts), ``outputs`` (the node's output work
as timed), ``flops`` (the arithmetic model and the Orin estimate), ``soak`` (memory), ``report`` (the text). The
ground-accuracy check is an evaluation and lives beside it, in ``tools/ground_accuracy``.
"""

from .report import format_bench
from .runner import run_bench
from .timing import host_ms_per_frame

__all__ = ["format_bench", "host_ms_per_frame", "run_bench"]
