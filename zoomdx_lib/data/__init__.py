"""Stage 1 of the data flow: synthetic B-mode cases, simulated raters, real-data importers, the data folder, dialogues."""
