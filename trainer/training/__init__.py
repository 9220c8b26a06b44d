"""The training program (`cliplab train`), apart from the CLIP library it trains: nothing in trainer's library
modules (model, checkpoint, tokenizer, transforms, loss) imports this package.

    trainer.py          the Trainer: builds the components, runs the loop
    launch.py           config, run directory and resume point from the command line; events and stop flag
    build.py            the model, frozen towers, loss, DDP + compile from the config
    step.py             one step's forward/backward with gradient accumulation
    data_feed.py        micro-batches on the device; unreadable images reported
    optim.py            AdamW groups, the LR schedule, clipping, the temperature clamp
    precision.py        train.device and train.precision: autocast and the GradScaler
    metrics.py          the device-side log window, metrics.csv, FLOPs and MFU
    metrics_processor.py  metrics from the window to events, metrics.csv and the terminal
    evaluator.py        evals during training and the best-checkpoint tracker
    checkpointer.py     what a checkpoint holds, from which component; save and resume
    checkpoint_folder.py  checkpoints/ on disk: atomic step directories, pointers, pruning, --resume
    progress.py         the step counter, heartbeat and terminal output
    rng.py              seeding and the RNG states a checkpoint holds
    run_lock.py         one training at a time per run directory (torch-free: `cliplab runs` reads it)
    stop.py             SIGTERM/SIGINT and the dashboard's stop request
    wise_ft.py          WiSE-FT weight interpolation
"""
