"""One module per fal endpoint: its input/output models and a handler. Nothing here knows HTTP."""
