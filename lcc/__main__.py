from lcc.cli import entry

entry()
