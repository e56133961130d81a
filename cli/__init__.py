"""om3db's command line (installed as the ``om3db_cli`` package): a thin typer layer over the API."""
