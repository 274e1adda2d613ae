"""Learned image compression: S2LIC on CompressAI's entropy models and rANS coder."""
