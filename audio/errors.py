class AudioError(Exception):
    """Audio could not be prepared, synthesised or played; the message says which and why."""
