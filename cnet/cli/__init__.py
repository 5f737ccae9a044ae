"""Command-line front ends for `python -m cnet`."""
