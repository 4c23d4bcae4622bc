"""`python -m keras_memgeom` runs the `memgeom` command."""

import sys

from keras_memgeom.src.cli.main import main

sys.exit(main())
