"""Numerical solvers the protocols call: batched logistic regression (L-BFGS) and K-Means."""
