"""The command line: ``python -m instantportrait {edit,stream,models,download}`` (``main`` builds the parser;
``models`` holds the models / download commands, ``stream`` the video command)."""
