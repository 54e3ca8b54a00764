"""Built-in data: the synthetic focus stack with ground truth."""
from .synthetic import Sample, sample_stack, layered_defocus

__all__ = ["Sample", "layered_defocus", "sample_stack"]
