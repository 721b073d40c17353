"""effdr_tf: diabetic retinopathy grading with EfficientNets in TensorFlow 2 / Keras 3."""

import os

# TensorFlow's C++ start-up INFO lines (CPU feature notes) bury our one-line errors; warnings
# and errors still show. Set before any submodule can import TensorFlow; a user's value wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
