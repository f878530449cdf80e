"""repbench: a benchmark and reproducibility harness for representation learning."""

__version__ = "0.1.0"
