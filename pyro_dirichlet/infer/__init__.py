"""Variational inference over the switches: the Pyro model, priors, guide, SVI fit, checkpoints and multi-process fitting."""
