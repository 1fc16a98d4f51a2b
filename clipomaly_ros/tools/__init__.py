"""Command line tools on top of the core and the ROS layer: ``cli`` (the ``clipomaly`` command), ``demo``,
``replay``, ``evaluation`` with ``metrics`` and ``plots``, and ``bench``."""
