"""Shared test helpers: a tiny upstream app, a load client, and a masterless sandbox host."""
