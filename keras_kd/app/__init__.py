"""The `keras-kd` application built on the keras_kd library: the command line,
the demos, their report and the demo data.

The library (`keras_kd`) never imports this package; it needs the `demo`
extra (`pip install "keras-kd[demo]"`).
"""
