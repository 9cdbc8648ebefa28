"""refopt: a reference implementation of second-order optimization for neural networks."""
__version__ = "0.1.0"
