"""`python -m keras_kd`: the `keras-kd` command."""

import sys

from keras_kd.app.cli import main

sys.exit(main())
