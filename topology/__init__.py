"""Topics (declarations and creation) and routing (keys and partitions)."""
