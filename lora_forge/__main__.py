import sys

from lora_forge.cli import main

sys.exit(main())
