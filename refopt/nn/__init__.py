"""Networks (dense MLPs) and losses as negative log-likelihoods."""
from .losses import LOSSES, Bernoulli, Gaussian, Loss, SoftmaxCrossEntropy, make_loss
from .mlp import ACTIVATIONS, MLP, LayerStats, layer_statistics

__all__ = ["MLP", "ACTIVATIONS", "LayerStats", "layer_statistics", "Loss", "SoftmaxCrossEntropy", "Gaussian",
           "Bernoulli", "LOSSES", "make_loss"]
