"""Recording: typed events, the recorder (hash chain, batching) and the stores behind a small Protocol."""
