"""The `memgeom` command: continual-learning benchmarks from the shell.

`memgeom demo` runs the package's main job offline in about a minute;
`memgeom bench` runs any benchmark the harness supports. Both print
progress and a table, and write `results.json` and PNG plots into a folder.
`memgeom merge` merges two trained models by every method; `memgeom info`
says which backend, versions and devices a run would use. Every command
first prints the Keras backend and how it was chosen (`KERAS_BACKEND`,
`keras.json`, or the first installed backend).

`parser` builds the argument parser, one module per command runs it
(`bench` for `demo` and `bench`, `merge`, `info`), and `main` dispatches.
"""
