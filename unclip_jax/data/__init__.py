"""Data sources: procedural toy scenes, image degradations, and (later) tfds builders and grain pipelines."""
