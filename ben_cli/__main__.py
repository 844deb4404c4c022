"""``python -m ben_cli ...`` (also what ``torchrun -m ben_cli train base ...`` runs)."""

from ben_cli.cli.app import run

if __name__ == "__main__":
    run()
