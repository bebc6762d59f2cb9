"""The data layer: files, arrays and frames -> :class:`Ratings`. Never imports the model."""
