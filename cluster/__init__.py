"""Ray plumbing, no attribution: connecting, spawning actors with their options in one place."""
