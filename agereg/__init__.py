"""agereg: hyperparameter search for linear regression trained by minibatch SGD."""

__version__ = "0.1.0"
