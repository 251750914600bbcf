"""The core every phase stands on: params, errors, file output, paths, URLs, progress."""
