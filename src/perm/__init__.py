"""perm: reward-model underspecification and pretrain-ensemble reward models."""

__version__ = "0.1.0"
