"""Training (the only package that imports torch): nets, the shared loop, plain / PINT / MCPM, fit, export."""
