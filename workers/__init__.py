"""Thin actor classes (plain classes; ``ray.remote`` is applied where they are spawned, in cluster/)."""
