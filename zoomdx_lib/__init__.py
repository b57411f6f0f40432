"""ZoomDx: the Look-Closer-Then-Diagnose method as a tested library for the workbook notebooks.

Rooms in data-flow order (a module imports only from rooms above it in this list):

    config, schema, geometry, protocol, io   profiles and stage configs, Sample, boxes and crops,
                                             the dialogue grammar, atomic I/O
    data/      synth, raters, images, importers, store, dialogue
    model/     build (tiny checkpoint), load (any checkpoint, LoRA), chat (token sequences)
    rl/        zoom (the tool), rollout (turn 1 -> crop -> turn 2), rewards (Eq. 1-3), advantages
    train/     loop (one resumable loop), checkpoints, sft, grpo
    eval/      generate (cached generations), scores, metrics, text_metrics, tables
    workbook/  runner (papermill), rundir (run folder, setup()), viz, widgets
"""
__version__ = "0.2.0"
