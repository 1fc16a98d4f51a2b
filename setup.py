from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "clipomaly_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Open-vocabulary road anomaly segmentation and naming with CLIP (Clipomaly) as a ROS 2 node",
    long_description=(Path(__file__).parent / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["data/*.txt", "data/vision_msgs/msg/*.msg", "data/model_configs/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
    ],
    install_requires=[
        "numpy>=1.24",
        "torch>=2.1",
        "open_clip_torch>=2.24",
        "opencv-python-headless>=4.8",
        "scipy>=1.10",
        "pyyaml>=6",
        "tqdm>=4.60",
        "rosbags>=0.10",
        "mcap>=1.1",
        "matplotlib>=3.7",
        "pillow>=9",
    ],
    extras_require={"test": ["pytest>=7", "scikit-learn>=1.3"]},
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "clipomaly = clipomaly_ros.tools.cli:main",
            "clipomaly_node = clipomaly_ros.ros.node:main",
        ],
    },
)
