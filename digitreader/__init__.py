"""digitreader: reads handwritten digits off scanned forms and bank cheques.

The library is the product; the CLI (`digitreader.cli`) and the Celery tasks (`workers`) are thin
adapters over it. The pipeline stages live one per module in `digitreader.pipeline`:

    load -> prepare -> fields -> cut -> normalize -> recognize -> assemble -> store
"""

__version__ = "0.1.0"
