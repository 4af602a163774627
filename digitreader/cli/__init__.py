"""Thin CLI adapters: parse arguments, call the library, serialize. No pipeline logic lives here."""
