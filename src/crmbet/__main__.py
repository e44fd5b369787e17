"""Allow ``python -m crmbet``."""

from crmbet.cli import main

main()
