#!/usr/bin/env python
"""Django's command-line utility for master_site."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # Run from inside the package: put the project root first, not this folder (its celery.py would shadow celery).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "master_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
