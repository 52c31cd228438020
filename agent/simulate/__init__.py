"""`nodewarden simulate`: incident replays (scenario.py reads them, replay.py runs them
through the real pipeline, render.py prints the timeline; docs/simulate.md)."""
