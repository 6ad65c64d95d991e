#!/usr/bin/env python
"""Django's command-line utility for the example site: ``python example/manage.py …``."""

import os
import sys
from pathlib import Path

# The example is the package ``example`` inside the repository: make the repository root
# importable whatever the current directory is.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
