"""The ``blendmask-edu`` command line: ``main`` parses and reports errors, ``data_commands`` and
``model_commands`` orchestrate the library, ``common`` holds what the commands share."""
