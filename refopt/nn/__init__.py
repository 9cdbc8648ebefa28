"""Networks (dense MLPs and convolutional networks) and losses as negative log-likelihoods."""
from .losses import LOSSES, Bernoulli, Gaussian, Loss, SoftmaxCrossEntropy, make_loss
from .mlp import ACTIVATIONS, MLP, LayerStats, layer_statistics
from .conv import CNN, AvgPool2d, Conv2d, Dense, Flatten, MaxPool2d, cnn_layer_statistics

__all__ = ["MLP", "ACTIVATIONS", "LayerStats", "layer_statistics", "Loss", "SoftmaxCrossEntropy", "Gaussian",
           "Bernoulli", "LOSSES", "make_loss", "CNN", "Conv2d", "Dense", "AvgPool2d", "MaxPool2d", "Flatten",
           "cnn_layer_statistics"]
