"""activebeam: Apache Beam transforms that turn raw camera data into labelling decisions.

Installable with ``pip install .`` and usable as Dataflow's ``--setup_file ./setup.py``.
Runtime dependencies are the pins of ``requirements.txt``.
"""
import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements():
    with open(os.path.join(HERE, "requirements.txt")) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


setuptools.setup(
    name="activebeam",
    version="0.1.0",
    description="Beam PTransforms for decoding, scoring, indexing and active-learning selection of camera frames",
    python_requires=">=3.10",
    # Only the three packages of the design; models/ (the training script) and benchmarks/ stay
    # in the checkout. The default model is package data of transforms.score.
    packages=setuptools.find_packages(include=["beam_pipelines", "beam_pipelines.*", "transforms", "transforms.*",
                                               "schemas"]),
    package_data={"transforms.score": ["models/*.keras"], "beam_pipelines.report": ["assets/*"],
                  "schemas": ["generated/*.md", "generated/bigquery/*", "generated/mongodb/*", "views/*.sql"]},
    install_requires=_requirements(),
    entry_points={"console_scripts": ["activebeam-mine=beam_pipelines.mine:main"]},
)
