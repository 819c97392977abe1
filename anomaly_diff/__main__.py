"""``python -m anomaly_diff`` runs the command line."""

from anomaly_diff.cli import main

if __name__ == "__main__":
    main()
