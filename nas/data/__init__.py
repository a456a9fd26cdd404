"""Images for search and training: readers for each supported data set, and the in-memory pipeline (the bilevel
split, shards, batched augmentation) on the run's device."""
