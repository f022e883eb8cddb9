"""Small apps for the ``flask dbfix check`` tests."""
