"""`python -m ablation.cli`: how `ablate run` starts its worker processes."""

from ablation.cli.entry import main

if __name__ == "__main__":  # imported (a walk over every module) it runs nothing
    main()
