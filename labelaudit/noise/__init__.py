"""Synthetic label noise: the operators and the dataset writer of `labelaudit corrupt`."""
