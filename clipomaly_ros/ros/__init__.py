"""The ROS layer on top of the core: the node (``node``), message conversions (``messages``, no ROS runtime needed),
rosbag2 reading (``bags``, with rosbags) and a bag player (``player``). Importing this package imports no rclpy;
``node`` and ``player`` do."""
