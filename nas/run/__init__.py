"""What a run is and goes through, whichever loop it runs: its files and whether it has finished, its directory,
log and progress, its checkpoints and graceful stop, its processes under torchrun, and the frame both loops use."""
