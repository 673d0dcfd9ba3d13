"""Application layer: use cases, the Flask app factory, the HTTP API and the CLI.

The only package that knows HTTP.
"""
