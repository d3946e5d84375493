"""``python -m cloudalliance.training [--flags]``: the entry script, as SageMaker's ``train.py`` runs it."""
import sys

from .train import main

sys.exit(main())
