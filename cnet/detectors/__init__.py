"""Control-map detectors, one module per family; weight-based ones import their libraries lazily."""
