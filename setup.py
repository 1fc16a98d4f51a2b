import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "clipomaly_ros"
# colcon may run this file from another folder (--symlink-install does): every path is found from here
HERE = Path(__file__).resolve().parent


# package.xml is the one place the version, the maintainer and the addresses are written
MANIFEST = ElementTree.parse(HERE / "package.xml").getroot()
MAINTAINER = MANIFEST.find("maintainer")
URLS = {url.get("type"): url.text.strip() for url in MANIFEST.iter("url")}


def files(pattern: str) -> list[str]:
    """The package's files matching ``pattern``, as paths relative to the working directory."""
    return sorted(os.path.relpath(path) for path in HERE.glob(pattern))


setup(
    name=PACKAGE,
    version=MANIFEST.findtext("version").strip(),
    description="Open-vocabulary road anomaly segmentation and naming with CLIP (Clipomaly) as a ROS 2 node",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license=MANIFEST.findtext("license").strip(),
    maintainer=MAINTAINER.text.strip(),
    maintainer_email=MAINTAINER.get("email"),
    url=URLS["website"],
    project_urls={"Bug Tracker": URLS["bugtracker"], "Source": URLS["repository"]},
    python_requires=">=3.10",
    packages=find_packages(where=os.path.relpath(HERE), exclude=["test", "test.*"]),
    package_data={PACKAGE: ["data/*.txt", "data/*.xml", "data/*/msg/*.msg", "data/model_configs/*.json",
                           "data/ram_plus/*", "tools/review/static/*.html"]},
    data_files=[
        ("share/ament_index/resource_index/packages", files(f"resource/{PACKAGE}")),
        (f"share/{PACKAGE}", files("package.xml")),
        (f"share/{PACKAGE}/config", files("config/*.yaml")),
        (f"share/{PACKAGE}/launch", files("launch/*.launch.py")),
        (f"share/{PACKAGE}/foxglove", files("foxglove/*.json")),
    ],
    install_requires=[
        "numpy>=1.24",
        "torch>=2.7",  # runtime compile: dynamo's recompile_limit and FailOnRecompileLimitHit (2.7)
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
    extras_require={
        # catkin_pkg reads CHANGELOG.rst as the ROS release tools do; selenium drives Debian's chromium and
        # chromium-driver (scripts/setup.sh installs those) in the review test
        "test": ["pytest>=7", "pytest-xdist>=3.6.1", "scikit-learn>=1.3", "selenium>=4.20", "catkin_pkg>=0.5"],
        # runtime: onnx and `clipomaly export`; on a GPU machine install onnxruntime-gpu instead of onnxruntime
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        # `clipomaly mine`: Ray Data runs it on one machine or a cluster; pyarrow writes the Parquet index, pycocotools
        # its masks
        "mine": ["ray[data]>=2.50,<3", "pyarrow>=14", "pycocotools>=2.0.7"],
        # `clipomaly review`, `export MINED --format`, `import`: masks as COCO RLE, the index read with pyarrow
        "review": ["pycocotools>=2.0.7", "pyarrow>=14"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "clipomaly = clipomaly_ros.tools.cli:main",
            "clipomaly_node = clipomaly_ros.ros.process:main",
        ],
    },
)
