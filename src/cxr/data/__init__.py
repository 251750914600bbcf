"""The data phase: the download, split and augment stages."""
