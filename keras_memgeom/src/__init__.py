"""The implementation of keras_memgeom; import public names from the
package's subpackages (`keras_memgeom.memory`, ...), not from here."""
