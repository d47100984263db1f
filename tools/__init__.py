"""Tools the model can call: schemas from Python functions, and the python tool."""
