"""Celery worker pools for the distributed mode: `app` (configuration), `tasks` (thin adapters
over `digitreader.distributed`), `codec` (compact bytes for crops between the pools)."""
