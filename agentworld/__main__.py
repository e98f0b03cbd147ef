import sys

from agentworld.cli import main

sys.exit(main())
