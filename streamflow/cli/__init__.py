"""The `streamflow` command line: composes the library, producers and consumers into processes."""
