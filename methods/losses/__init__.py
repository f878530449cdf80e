"""Losses as pure functions of one process's tensors; gathering across ranks is the caller's job.

Shape letters in the docstrings: N batch, V views, D features, K queue/prototypes, C classes.
Import each from its module (``from methods.losses.contrastive import nt_xent_loss``).
"""
