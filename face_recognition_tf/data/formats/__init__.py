"""Foreign formats read as they are: insightface/MXNet RecordIO (.rec/.idx) and verification .bin pair sets."""
