"""The embedded synthetic sample dataset (`frtf sample`): rendered faces written in insightface's layout."""
