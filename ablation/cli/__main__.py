"""`python -m ablation.cli`: how `ablate run` starts its worker processes."""

from ablation.cli.entry import main

main()
