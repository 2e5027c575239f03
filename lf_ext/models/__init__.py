"""Model-side pieces: the background/object-separated vision tower forward."""
