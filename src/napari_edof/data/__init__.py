"""Built-in data: the synthetic focus stack with ground truth."""
from .synthetic import Sample, layered_defocus, sample_stack

__all__ = ["Sample", "layered_defocus", "sample_stack"]
