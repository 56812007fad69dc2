"""ament_python package vo_node; also installs with pip (`pip install -e .`)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vo_node"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/models", glob("models/*.pt") + glob("models/*.md")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="vo_node developers",
    maintainer_email="vo_node@example.invalid",
    description="Learned monocular visual odometry (DPVO-style) with a ROS 2 node",
    license="MIT",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "vo_node = vo_node.ros.node:main",
            "vo_replay = vo_node.ros.replay:main",
            "vo_run = vo_node.run:main",
        ],
    },
)
