"""Review of flagged digits: `service` (queue, corrections, undo; library functions shared by the
web page and the CLI) and `app` (the Starlette review page, `digitreader review`)."""
