"""Our on-disk format: TFRecord shards (Example schema, framing, CRC-32C) and manifest.json."""
