"""Allow ``python -m crmbet``."""

from crmbet.cli import main

if __name__ == "__main__":
    main()
