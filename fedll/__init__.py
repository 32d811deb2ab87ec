"""fedll: federated lifelong learning for glioma segmentation (static vs Dy-CNN U-Nets)."""

__version__ = "0.1.0"
