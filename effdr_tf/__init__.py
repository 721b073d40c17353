"""effdr_tf: diabetic retinopathy grading with EfficientNets in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
