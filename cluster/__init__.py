"""Ray plumbing, no attribution: connecting or starting a cluster, resources and placement groups,
actor groups (``ray.remote`` and every actor option in one place), the runtime env of all actors,
metric definitions and error classes."""
