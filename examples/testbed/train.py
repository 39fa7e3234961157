"""Train the reasoning-testbed model; see docs/testbed.md for the exact command used for the committed checkpoint."""

from optimum_rku.testbed.train import main

if __name__ == "__main__":
    main()
