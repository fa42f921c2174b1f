"""Install supsup-hopfield: `pip install -e .[test]`."""
from setuptools import setup

setup(
    name="supsup-hopfield",
    version="0.1.0",
    description="Supermasks in Superposition with the task masks stored in a fixed-size Hopfield memory",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # cli/ and compression/ stay top-level folders of the source tree but install inside the
    # package (supsup_hopfield.cli, supsup_hopfield.compression): no top-level names to clash with
    packages=["supsup_hopfield", "supsup_hopfield.cli", "supsup_hopfield.compression"],
    package_dir={"supsup_hopfield.cli": "cli", "supsup_hopfield.compression": "compression"},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.24",
        "scipy>=1.10",
        "numba>=0.58",
        "h5py>=3.8",
        "click>=8.1",
        "tqdm>=4.60",        # progress bars with rate and ETA
        "matplotlib>=3.6",   # PNG plots
        "constriction>=0.3", # ANS entropy coder for the `entropy` and `delta` codecs
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        "ray": ["ray>=2.9"],  # `train --executor ray`: tasks on Ray workers, here or on a cluster
    },
    entry_points={"console_scripts": ["supsup-hf=supsup_hopfield.cli.main:main"]},
)
