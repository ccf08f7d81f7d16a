"""simtune: simulate and tune Ray Serve autoscaling on recorded traffic."""

__version__ = "0.1.0"
