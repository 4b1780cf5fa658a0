"""The FastAPI serving layer of fstore (``fstore serve``)."""
