"""Data pipeline: GeoTIFF I/O, degradation, normalisation, area splits, datasets."""
