"""The command line (``demiarch-flow``); :func:`main` is its only public name."""
