"""Evidence anyone can check: the transparency log, trusted time, the published record format."""
