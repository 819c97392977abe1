"""``python -m anomaly_diff`` runs the command line."""

from anomaly_diff.commands import main

if __name__ == "__main__":
    main()
