"""What the hub and the stations share: topics, signed envelopes, audio chunks, the clock.

Imported by both sides; imports nothing of theirs.
"""
