"""coco_tf: CoCo (LLM-enhanced sequential recommendation) on TensorFlow."""
from setuptools import find_packages, setup

setup(
    name="coco_tf",
    version="0.1.0",
    description=(
        "CoCo: LLM-enhanced sequential recommendation on TensorFlow "
        "(TFRS retrieval towers, VQ soft prompts, Qwen-style decoder with LoRA, "
        "parameter-server training)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["coco_tf", "coco_tf.*"]),
    python_requires=">=3.10,<3.13",
    # One version set that installs and imports together (checked on Python 3.11):
    # the training graph is Keras 2 (tf-keras); keras-nlp (Keras 3) is used for
    # tokenizers, weight import and as the decoder's numerical oracle.
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorboard>=2.20",
        "tensorflow-recommenders==0.7.7",
        "keras-nlp==0.32.*",
        "numpy>=1.26",
        "absl-py>=2.0",
        "pyyaml>=6.0",
        "safetensors>=0.4",
    ],
    extras_require={"test": ["pytest>=8", "matplotlib>=3.7", "import-linter>=2.1"], "plots": ["matplotlib>=3.7"]},
    entry_points={
        "console_scripts": [
            "coco-train=coco_tf.train:run",
            "coco-export=coco_tf.export.__main__:run",
        ],
    },
)
