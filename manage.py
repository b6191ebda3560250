#!/usr/bin/env python
"""Django's command-line utility. Starts the embedded Redis when REDIS_URL is unset."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from project import embedded_redis

    if embedded_redis.wanted():
        embedded_redis.ensure_running()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
