"""Tile and slide encoders (Virchow, Prism) and the pipeline that runs them over a slide.

The hub ids live here, free of heavy imports, so the command line can show its defaults quickly.
"""

VIRCHOW_ID = "paige-ai/Virchow"
PRISM_ID = "paige-ai/Prism"
