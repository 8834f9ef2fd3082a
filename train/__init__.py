"""Stage two: pool cached tokens and train the projector + temporal module."""
