"""Mask providers: how an image is split into background and object."""
