"""Stage 6: the papermill runner, the run folder and setup(), figures and ipywidgets browsers."""
